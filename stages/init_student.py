"""DVC stage `init_student`: the student checkpoint initialised from the trained teacher."""

import argparse
import sys
from pathlib import Path

from pipeline.errors import exit_code
from pipeline.stage_params import leave_marker
from pipeline.teacher.student_init import StudentInitSpec, init_student, summary_line


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--keep-layers", help="prune: teacher LLM layers to keep, e.g. 0,3")
    p.add_argument("--num-layers", type=int, help="share: fresh LLM layers")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    keep = [int(x) for x in a.keep_layers.split(",")] if a.keep_layers else []
    spec = StudentInitSpec(
        "prune" if keep else "share", keep_layers=keep, num_layers=a.num_layers, seed=a.seed
    )
    print(summary_line(init_student(a.teacher, a.out, spec, overwrite=True)))
    leave_marker("init_student")


if __name__ == "__main__":
    sys.exit(exit_code(main))
