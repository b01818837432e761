"""DVC stage `prepare`: validate the raw splits, assign sample ids -> data/prepared/."""

import argparse
from pathlib import Path

from pipeline.prepare import prepare_splits
from pipeline.stage_params import leave_marker

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    prepare_splits(a.inputs, a.out)
    leave_marker("prepare")
