"""``distill export-written``: a teacher-written cache's rows, responses filled in, as text JSONL."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import add_config, load

HELP = "write a teacher-written cache's rows, responses filled in, as JSONL"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument("--out", type=Path, required=True, help="JSONL file to write")


def run(args: argparse.Namespace) -> int:
    from pipeline.cache.cachedir import CacheDir
    from pipeline.teacher.written import export_written

    cfg = load(args)
    counts = export_written(CacheDir.of(cfg).split("train").root, cfg.data.dataset[0], args.out)
    print(f"{counts['rows']} rows ({counts['teacher_written']} teacher-written) -> {args.out}")
    return 0
