"""matplotlib through its object API only: a `Figure` on an Agg canvas, never pyplot.

No global state (thread-safe, no display needed) and matplotlib is imported on first use, so the data
functions of `sharp_prune.viz` work without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

INSTALL_HINT = "pictures need matplotlib: pip install 'sharp-prune[viz]'"
DPI = 120


def require_matplotlib() -> None:
    """Raise ImportError (saying what to install) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err


def new_figure(width: float, height: float) -> Any:
    """A `matplotlib.figure.Figure` of `width` x `height` inches with an Agg canvas and constrained layout."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Any, path: str | Path) -> Path:
    """Write `figure` as PNG to `path` (creating its folder); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    return path
