"""DVC stage `cache`: run the teacher once over the train and val splits (knobs: params.yaml `cache`)."""

import argparse
import sys
from pathlib import Path

from pipeline.errors import exit_code
from pipeline.stage_params import leave_marker, load_stage_config, write_resolved
from pipeline.teacher.stage import run_caching


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--strict", action="store_true")
    a = p.parse_args()
    cfg, resolved = load_stage_config(a.config, a.params, ["cache"])
    run_caching(cfg, strict=a.strict)
    write_resolved(resolved, Path(cfg.custom.teacher_cache) / "resolved_config.yaml")
    leave_marker("cache")


if __name__ == "__main__":
    sys.exit(exit_code(main))
