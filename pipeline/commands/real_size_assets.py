"""``distill real-size-assets``: Qwen2.5-VL-7B/3B-shaped teacher and student (random bf16 weights)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.commands.options import positive_int

HELP = "build Qwen2.5-VL-7B/3B-shaped random models and a few real-size rows (no download)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--depth",
        choices=["reduced", "full"],
        default="reduced",
        help="reduced: real widths and vocabulary, 2 LLM layers and 2 vision blocks (~4.3 GB on disk); "
        "full: the published depth (28/36 layers, 32 blocks; ~24 GB on disk, one model in memory at a time)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=positive_int, default=2)
    p.add_argument("--n-val", type=positive_int, default=1)
    p.add_argument("--image-px", type=positive_int, default=448, help="image side, a multiple of 28")
    p.add_argument("--caption-tokens", type=positive_int, default=200, help="tokens per caption, at least")
    p.add_argument("--overwrite", action="store_true", help="replace real-size assets already in --out")


def run(args: argparse.Namespace) -> int:
    from pipeline.demo.real_assets import build_real_assets

    paths = build_real_assets(
        args.out,
        args.depth,
        seed=args.seed,
        n_train=args.n_train,
        n_val=args.n_val,
        image_px=args.image_px,
        caption_tokens=args.caption_tokens,
        overwrite=args.overwrite,
    )
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0
