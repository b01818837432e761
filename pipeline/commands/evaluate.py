"""``distill evaluate``: score a trained model (CE, token accuracy, KL to the cache, caption metrics)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import add_config, load

HELP = "evaluate a trained student (CE, KL to cache, caption F1)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument("--checkpoint", type=Path, help="model dir to evaluate (default: the run's final model)")
    p.add_argument("--split", default="val")
    p.add_argument("--out", type=Path, required=True, help="metrics JSON path")


def run(args: argparse.Namespace) -> int:
    from pipeline.evaluate.report import attach_train_time
    from pipeline.evaluate.run import run_evaluation

    cfg = load(args)
    run_evaluation(cfg, checkpoint=args.checkpoint, split=args.split, out=args.out)
    if args.checkpoint is None:  # the run's own model: its training wall-clock belongs in its metrics
        attach_train_time(args.out, Path(cfg.train.output_dir))
    return 0
