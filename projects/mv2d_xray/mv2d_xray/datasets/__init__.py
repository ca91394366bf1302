"""mv2d-xray plugin: datasets (imported by the plugin package; each module registers itself)."""

__all__ = []
