"""``distill inspect``: summarise, audit, show or export one split of a teacher cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import parse_sets, positive_int

HELP = "summarise, audit or export a teacher cache"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("cache", type=Path)
    p.add_argument("--sample", help="print a per-token table for this sample_id")
    p.add_argument("--audit", action="store_true", help="check alignment; exit non-zero on a problem")
    p.add_argument(
        "--dataset", type=Path, help="audit: the split's JSONL, to check coverage (default: --config's)"
    )
    p.add_argument(
        "--config",
        type=Path,
        help="re-encode rows with this config (audit, report context; default: the recorded one)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a --config key")
    p.add_argument(
        "--tokenizer",
        type=Path,
        help="tokenizer dir for token text (default: the --config model, else the one recorded in the cache)",
    )
    p.add_argument(
        "--html", type=Path, help="write a self-contained HTML report: index, histograms, images, tokens"
    )
    p.add_argument("--figures", type=Path, help="write histograms.png and histograms.svg into this directory")
    p.add_argument("--compare", type=Path, help="another cache split: summary and histograms side by side")
    p.add_argument("--limit", type=positive_int, default=50, help="rows shown in full in the --html report")
    p.add_argument(
        "--select",
        help="report rows worst first by p_target (default), tail, entropy, outside, written_limit "
        "(teacher-written rows that hit max_new_tokens) or ids_changed; or sample ids a,b",
    )
    p.add_argument(
        "--export", type=Path, help="write a plain copy: .parquet, .arrow (a stream datasets opens) or .jsonl"
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.inspection.command import run_inspect

    inspect_cfg = load_config(args.config, overrides=parse_sets(args.set)) if args.config else None
    return run_inspect(
        args.cache,
        sample=args.sample,
        audit=args.audit,
        cfg=inspect_cfg,
        tokenizer=args.tokenizer,
        html=args.html,
        figures=args.figures,
        compare=args.compare,
        export=args.export,
        limit=args.limit,
        select=args.select,
        dataset=args.dataset,
    )
