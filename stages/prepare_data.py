"""DVC stage `prepare`: validate the raw splits, assign sample ids -> data/prepared/."""

import argparse
import sys
from pathlib import Path

from pipeline.errors import exit_code
from pipeline.prepare import prepare_splits
from pipeline.stage_params import leave_marker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    prepare_splits(a.inputs, a.out)
    leave_marker("prepare")


if __name__ == "__main__":
    sys.exit(exit_code(main))
