"""DVC stage `evaluate@*`: CE, token accuracy, KL to the cached eval split, caption F1 -> metrics JSON."""

import argparse
import sys
from pathlib import Path

from pipeline.errors import exit_code
from pipeline.evaluate.report import attach_train_time
from pipeline.evaluate.run import run_evaluation
from pipeline.stage_params import leave_marker, load_stage_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--groups", nargs="*", default=["student", "cache"])
    p.add_argument("--split", default="val")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    cfg, _ = load_stage_config(a.config, a.params, a.groups)
    run_evaluation(cfg, checkpoint=None, split=a.split, out=a.out)
    attach_train_time(a.out, Path(cfg.train.output_dir))
    leave_marker("evaluate", config=str(a.config))


if __name__ == "__main__":
    sys.exit(exit_code(main))
