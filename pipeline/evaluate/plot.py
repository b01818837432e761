"""A static PNG of the run comparison (caption F1 and CE per run), readable offline.

``dvc plots show`` renders the same CSV with Vega loaded from a CDN, which is blank without network;
this figure is the copy that always opens.
"""

from __future__ import annotations

import csv
from pathlib import Path


def plot_comparison(csv_path: str | Path, png_path: str | Path, title: str = "") -> Path:
    """Two horizontal bar panels (caption F1, CE) with one bar per run of ``comparison.csv``."""
    import matplotlib

    matplotlib.use("Agg")  # no display on CI machines
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    runs = [r["run"] for r in rows]

    def values(key: str) -> list[float]:
        return [float(r[key]) if r.get(key) not in (None, "") else 0.0 for r in rows]

    fig, axes = plt.subplots(1, 2, figsize=(10, 0.5 * len(runs) + 1.5), sharey=True)
    for ax, key, label in (
        (axes[0], "caption_f1", "caption F1 (higher is better)"),
        (axes[1], "ce", "CE, nats/token (lower is better)"),
    ):
        vals = values(key)
        ax.barh(runs, vals, color="#4c72b0")
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.3f}", va="center", fontsize=8)
        ax.set_xlabel(label)
        ax.invert_yaxis()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
