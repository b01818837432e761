"""Demo-only DVC stage `demo_assets`: the tiny teacher/student and the synthetic captioning dataset."""

import argparse
import sys
from pathlib import Path

from pipeline.demo.assets import build_demo_assets
from pipeline.errors import exit_code
from pipeline.stage_params import leave_marker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, required=True)
    p.add_argument("--n-val", type=int, required=True)
    p.add_argument("--n-test", type=int, required=True)
    p.add_argument("--n-labelled", type=int, required=True)
    p.add_argument("--n-pool", type=int, required=True)
    p.add_argument("--captions", choices=["exact", "varied"], default="exact")
    a = p.parse_args()
    build_demo_assets(
        a.out,
        seed=a.seed,
        n_train=a.n_train,
        n_val=a.n_val,
        n_test=a.n_test,
        n_labelled=a.n_labelled,
        n_pool=a.n_pool,
        captions=a.captions,
        overwrite=True,
    )
    leave_marker("demo_assets")


if __name__ == "__main__":
    sys.exit(exit_code(main))
