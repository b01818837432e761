"""``distill cache``: run the teacher once and cache its top-k distributions (or predict the cost)."""

from __future__ import annotations

import argparse

from pipeline.commands.options import (
    add_config,
    dump_config,
    is_main_process,
    load_with_mapping,
    positive_int,
)

HELP = "run the teacher once and cache its top-k distributions"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument("--split", choices=["train", "val", "all"], default="all")
    p.add_argument("--strict", action="store_true", help="fail on the first bad row instead of skipping it")
    p.add_argument(
        "--limit", type=positive_int, default=None, help="cache only the first N rows of each split (N >= 1)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the rows to reuse and to compute; predict rows, tokens, bytes, time; write nothing",
    )
    p.add_argument(
        "--compact",
        action="store_true",
        help="after caching, rewrite the cache without superseded rows and rows the dataset no longer has",
    )


def run(args: argparse.Namespace) -> int:
    cfg, resolved = load_with_mapping(args)
    if args.dry_run:
        from pipeline.teacher.dry_run import run_dry_run

        run_dry_run(cfg, split=args.split, limit=args.limit)
        return 0
    from pipeline.teacher.stage import run_caching

    run_caching(cfg, split=args.split, strict=args.strict, limit=args.limit, compact=args.compact)
    if is_main_process():
        from pipeline.cache.cachedir import CacheDir

        dump_config(resolved, CacheDir.of(cfg).resolved_config)
    return 0
