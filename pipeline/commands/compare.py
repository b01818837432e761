"""``distill compare``: one table (markdown + CSV for ``dvc plots``) and a PNG of evaluated runs."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "compare evaluated runs: comparison.{md,csv,png}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "metrics", nargs="+", type=Path, help="metrics JSON files, or directories holding <run>.json files"
    )
    p.add_argument("--out", type=Path, required=True, help="directory for comparison.{md,csv,png}")
    p.add_argument(
        "--runs",
        type=Path,
        help="params file whose runs: give the rows and their order (each must have metrics)",
    )
    p.add_argument("--title", default="test split", help="the plot's title")


def metric_files(sources: list[Path], runs_file: Path | None) -> list[Path]:
    """The JSON files of ``sources`` (a directory contributes its ``*.json``); with ``runs_file``, one
    per run of its ``runs:``, in that order."""
    from pipeline.errors import ConfigError

    found: dict[str, Path] = {}
    for src in sources:
        for f in sorted(src.glob("*.json")) if src.is_dir() else [src]:
            found[f.stem] = f
    if runs_file is None:
        return list(found.values())
    from pipeline.params import run_names

    names = run_names(runs_file)
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(
            f"{runs_file}: runs without a metrics file in {', '.join(map(str, sources))}: {missing}"
        )
    return [found[n] for n in names]


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluate.plot import plot_comparison
    from pipeline.evaluate.report import compare_runs

    for row in compare_runs(metric_files(args.metrics, args.runs), args.out):
        print(row)
    plot_comparison(args.out / "comparison.csv", args.out / "comparison.png", args.title)
    return 0
