"""DVC stage `export_written`: the teacher-written cache's rows as text JSONL (SFT / live-teacher runs)."""

import argparse
import sys
from pathlib import Path

from pipeline.errors import exit_code
from pipeline.stage_params import leave_marker, load_stage_config
from pipeline.teacher.written import export_written


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", type=Path, required=True, help="the config the cache was written with")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args()
    cfg, _ = load_stage_config(a.config, a.params, ["cache"])
    counts = export_written(Path(cfg.custom.teacher_cache) / "train", cfg.data.dataset[0], a.out)
    print(f"[export_written] {counts['rows']} rows, {counts['teacher_written']} teacher-written -> {a.out}")
    leave_marker("export_written")


if __name__ == "__main__":
    sys.exit(exit_code(main))
