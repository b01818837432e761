"""DVC stage `compare`: one table (markdown + CSV for `dvc plots`) and a static PNG of every evaluated run."""

import argparse
import sys
from pathlib import Path

from pipeline.errors import exit_code
from pipeline.evaluate.plot import plot_comparison
from pipeline.evaluate.report import compare_runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("metrics", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    for row in compare_runs(a.metrics, a.out):
        print(row)
    plot_comparison(a.out / "comparison.csv", a.out / "comparison.png", "demo test split")


if __name__ == "__main__":
    sys.exit(exit_code(main))
