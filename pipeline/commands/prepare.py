"""``distill prepare``: validate JSONL splits and assign stable sample ids."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "validate a JSONL dataset and assign stable sample ids"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", type=Path, help="JSONL files (one per split)")
    p.add_argument("--out", type=Path, required=True, help="output directory for the prepared splits")


def run(args: argparse.Namespace) -> int:
    from pipeline.prepare import prepare_splits

    prepare_splits(args.inputs, args.out)
    return 0
