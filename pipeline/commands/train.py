"""``distill train``: one model from its config (SFT, cached GKD or live GKD) through ms-swift."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pipeline.commands.options import add_config, dump_config, is_main_process, load_with_mapping

HELP = "train (SFT or GKD) from a config through ms-swift"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)


def run(args: argparse.Namespace) -> int:
    from pipeline.train.launcher import run_training

    cfg, resolved = load_with_mapping(args)
    t0 = time.perf_counter()
    run_training(cfg)
    if is_main_process():
        # The run's record beside its checkpoints: the exact config, and the wall-clock that
        # `distill evaluate` copies into the metrics for the comparison table.
        out = Path(cfg.train.output_dir)
        dump_config(resolved, out / "resolved_config.yaml")
        wall = {"train_wall_s": round(time.perf_counter() - t0, 2)}
        (out / "train_time.json").write_text(json.dumps(wall) + "\n")
    return 0
