"""The whole cache at a glance: histograms of tail mass, entropy, target rank, p(target) and
supervised tokens per row, drawn with matplotlib for the HTML report and as PNG/SVG files.

Two or more caches (``--compare``) share one set of axes per statistic: each cache is a step outline
of the fraction of its tokens (or rows) per bin, so caches of different sizes compare directly.
Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no global backend state).
"""

from __future__ import annotations

import io
import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.files import atomic_write
from pipeline.inspection.summary import Profile

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
TAIL_FLOOR = -12.0  # log10 tail mass below this (and -inf: the top-k held everything) is drawn at it
FIGURE_NAME = "histograms"


def rank_buckets(ranks: np.ndarray, top_k: int) -> tuple[list[str], np.ndarray]:
    """Target ranks (0-based, -1 outside the top-k) counted in buckets 1, 2, 3-4, 5-8, ..., k, outside.

    Returns (labels, counts int64 [n_buckets]).
    """
    edges = [1, 2, 3]
    while edges[-1] <= top_k:
        edges.append(2 * edges[-1] - 1)  # 1, 2, 3, 5, 9, 17, ...: buckets 1, 2, 3-4, 5-8, 9-16
    labels, counts = [], []
    one_based = ranks + 1
    for lo, hi in itertools.pairwise(edges):
        if lo > top_k:
            break
        top = min(hi - 1, top_k)
        labels.append(str(lo) if lo == top else f"{lo}-{top}")
        counts.append(int(((one_based >= lo) & (one_based <= top)).sum()))
    labels.append("out")
    counts.append(int((ranks < 0).sum()))
    return labels, np.asarray(counts, dtype=np.int64)


def _series(p: Profile) -> dict[str, np.ndarray]:
    with np.errstate(divide="ignore"):
        log_tail = np.log10(p.tokens["tail"])
    return {
        "tail": np.clip(np.nan_to_num(log_tail, neginf=TAIL_FLOOR), TAIL_FLOOR, 0.0),
        "entropy": p.tokens["entropy"],
        "target_prob": p.tokens["target_prob"],
        "row_targets": np.asarray([r.num_targets for r in p.rows], dtype=np.float64),
    }


def histograms(profiles: list[tuple[str, Profile]]) -> Figure:
    """One figure, five panels; ``profiles`` are (label, :class:`Profile`) pairs, one colour each."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 6.4), dpi=80, layout="constrained")
    axes = fig.subplots(2, 3)
    series = [(label, _series(p), p) for label, p in profiles]
    panels = [
        ("tail", "log10 tail mass (per token)", np.linspace(TAIL_FLOOR, 0.0, 49)),
        ("entropy", "teacher entropy, nats (per token)", None),
        ("target_prob", "p(target) (per token)", np.linspace(0.0, 1.0, 41)),
        ("row_targets", "supervised tokens per row", None),
    ]
    for ax, (key, title, bins) in zip([axes[0, 0], axes[0, 1], axes[1, 0], axes[1, 1]], panels, strict=True):
        values = [s[key] for _, s, _ in series]
        if bins is None:
            hi = max((float(v.max()) for v in values if v.size), default=1.0)
            bins = np.linspace(0.0, max(hi, 1e-9) * 1.0001, 41)
        for i, (label, s, _) in enumerate(series):
            v = s[key]
            if v.size:
                ax.hist(
                    v,
                    bins=bins,
                    weights=np.full(v.size, 1.0 / v.size),
                    histtype="step",
                    linewidth=1.6,
                    color=COLOURS[i % len(COLOURS)],
                    label=label,
                )
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("fraction")
    ax = axes[0, 2]
    width = 0.8 / max(len(series), 1)
    for i, (label, _, p) in enumerate(series):
        names, counts = rank_buckets(p.tokens["target_rank"].astype(np.int64), p.top_k)
        frac = counts / max(int(counts.sum()), 1)
        x = np.arange(len(names)) + (i - (len(series) - 1) / 2) * width
        ax.bar(x, frac, width=width, color=COLOURS[i % len(COLOURS)], label=label)
        ax.set_xticks(np.arange(len(names)), names, rotation=45, fontsize=8)
    ax.set_title("target rank in the teacher's top-k", fontsize=10)
    ax.set_ylabel("fraction")
    _legend_panel(axes[1, 2], profiles)
    return fig


def _legend_panel(ax: object, profiles: list[tuple[str, Profile]]) -> None:
    """The last panel: which colour is which cache, with its token and row counts."""
    ax.axis("off")  # type: ignore[attr-defined]
    for i, (label, p) in enumerate(profiles):
        n_tok, n_rows = p.tokens["target_prob"].size, len(p.rows)
        ax.text(  # type: ignore[attr-defined]
            0.02,
            0.9 - 0.16 * i,
            f"\u25a0 {label}\n   {n_rows} rows, {n_tok} tokens, k={p.top_k}",
            color=COLOURS[i % len(COLOURS)],
            fontsize=10,
            va="top",
            transform=ax.transAxes,  # type: ignore[attr-defined]
        )


def figure_bytes(fig: Figure, fmt: str = "png") -> bytes:
    """``fig`` rendered as ``png`` or ``svg`` bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    return buf.getvalue()


def write_figures(profiles: list[tuple[str, Profile]], out_dir: str | Path) -> list[Path]:
    """Write ``histograms.png`` and ``histograms.svg`` (for pasting into an issue) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig = histograms(profiles)
    paths = []
    for fmt in ("png", "svg"):
        path = out / f"{FIGURE_NAME}.{fmt}"
        with atomic_write(path, "wb") as fh:  # a full disk is one line and leaves the old figure
            fh.write(figure_bytes(fig, fmt))
        paths.append(path)
    return paths
