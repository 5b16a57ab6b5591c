"""The matplotlib set-up every plot shares: the import (an optional extra), and saving a figure
at a known pixel size in the format its file name asks for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FORMATS = (".png", ".svg", ".pdf")
DPI = 100


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, or an ImportError saying what to install."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'alignkit[plot]'") from None
    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def check_output(path: str | Path) -> Path:
    """``path`` as a Path whose suffix is a supported format, before any work is done."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"output: expected a file name ending in {', '.join(FORMATS)}, received {str(path)!r}")
    return path


def save(figure: Any, path: Path) -> Path:
    """Write ``figure`` to ``path`` (PNG, SVG or PDF by suffix) at its own size: ``figsize`` x
    :data:`DPI` pixels for PNG. Closes the figure."""
    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)  # no bbox_inches="tight": the pixel size stays what was asked
    plt.close(figure)
    return path
