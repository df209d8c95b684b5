"""Drawing helpers every stage shares: matplotlib without a display, figures written
atomically, SNP positions laid out along the genome.  matplotlib is imported when a
figure is drawn, never when this module is."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    plt = pyplot()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def place_labels(ax, xs, ys, names, fontsize: int = 7) -> list:
    """Label the points (xs, ys) with ``names`` so that no two labels overlap each other,
    the points or the axes' edges (adjustText moves them apart and draws a leader line);
    the y axis is raised to leave room above the highest point.  Returns the texts."""
    if not len(names):
        return []
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi + 0.25 * (hi - lo))
    texts = [ax.text(x, y, n, fontsize=fontsize) for x, y, n in zip(xs, ys, names)]
    try:
        from adjustText import adjust_text
    except ImportError as e:  # a broken install (adjustText needs scipy): the figure, its labels unplaced
        logger.warning(f"figure labels left where their points are, they may overlap: {e}")
        return texts
    adjust_text(texts, x=np.asarray(xs, float), y=np.asarray(ys, float), ax=ax, ensure_inside_axes=True,
                arrowprops={"arrowstyle": "-", "color": "0.4", "lw": 0.5})
    return texts


def genome_x(frame: pd.DataFrame) -> tuple[np.ndarray, list]:
    """x coordinate along the genome: chromosome blocks in file order, positions within;
    SNP index where names gave no position.  Returns x and (label, centre) ticks."""
    if (frame["pos"] < 0).any():
        return np.arange(len(frame), dtype=float), []
    x = np.empty(len(frame))
    ticks, offset = [], 0.0
    for chrom, g in frame.groupby("chrom", sort=False):
        pos = g["pos"].to_numpy(float)
        x[g.index.to_numpy() - frame.index[0]] = offset + pos - pos.min()
        span = max(pos.max() - pos.min(), 1.0)
        ticks.append((chrom, offset + span / 2))
        offset += span * 1.02
    return x, ticks
