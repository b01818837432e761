"""DVC stage `train_*`: train one model from its config (knobs: params.yaml `student` and `cache`)."""

import argparse
import json
import sys
import time
from pathlib import Path

from pipeline.errors import exit_code
from pipeline.stage_params import leave_marker, load_stage_config, write_resolved
from pipeline.train.launcher import run_training


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument(
        "--groups", nargs="*", default=["student", "cache"], help="params.yaml groups this stage reads"
    )
    a = p.parse_args()
    cfg, resolved = load_stage_config(a.config, a.params, a.groups)
    t0 = time.perf_counter()
    run_training(cfg)
    out = Path(cfg.train.output_dir)
    write_resolved(resolved, out / "resolved_config.yaml")
    (out / "train_time.json").write_text(
        json.dumps({"train_wall_s": round(time.perf_counter() - t0, 2)}) + "\n"
    )
    leave_marker("train", config=str(a.config))


if __name__ == "__main__":
    sys.exit(exit_code(main))
