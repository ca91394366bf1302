"""What every picture of this package shares: matplotlib on the Agg backend (no display
needed) and one way to write a figure, PNG through the project's atomic writer
(:func:`projects.mv2d_xray.core.io.atomic_output`), so a failed or killed plot never
leaves a half-written image."""
from projects.mv2d_xray.core.io import atomic_output

#: Resolution of the PNGs written by :func:`save_png`, dots per inch.
DEFAULT_DPI = 110


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (imported on first use)."""
    import matplotlib
    matplotlib.use('Agg', force=True)
    import matplotlib.pyplot as plt
    return plt


def save_png(fig, path: str, dpi: int = DEFAULT_DPI) -> None:
    """Write ``fig`` to ``path`` as PNG, atomically (a temporary file renamed into place;
    the folder is created if needed)."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format='png')
