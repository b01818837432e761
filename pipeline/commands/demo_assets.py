"""``distill demo-assets``: the tiny local teacher/student models and the synthetic demo dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "build the tiny local teacher/student models and the demo dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-val", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--n-labelled", type=int, default=None, help="captioned rows of the student's project")
    p.add_argument("--n-pool", type=int, default=None, help="uncaptioned images (prompt-only rows)")
    p.add_argument(
        "--captions",
        choices=["exact", "varied"],
        default="exact",
        help="caption style: one canonical caption per image, or many valid phrasings (params.yaml demo.captions)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace demo assets already in --out")


def run(args: argparse.Namespace) -> int:
    from pipeline.demo.assets import build_demo_assets

    kwargs = {
        k: getattr(args, k)
        for k in ("n_train", "n_val", "n_test", "n_labelled", "n_pool")
        if getattr(args, k) is not None
    }
    paths = build_demo_assets(
        args.out, seed=args.seed, overwrite=args.overwrite, captions=args.captions, **kwargs
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
