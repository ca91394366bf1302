"""mv2d-xray plugin: evaluation (imported by the plugin package; each module registers itself)."""

__all__ = []
