"""mv2d-xray plugin: models (imported by the plugin package; each module registers itself)."""

__all__ = []
