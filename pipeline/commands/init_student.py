"""``distill init-student``: a student checkpoint initialised from the teacher (pruned or shared)."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a student checkpoint initialised from the teacher"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher", type=Path, required=True, help="teacher model directory")
    p.add_argument("--out", type=Path, required=True, help="student model directory to write")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--keep-layers", help="prune: teacher LLM layers to keep, e.g. 0,3")
    g.add_argument(
        "--num-layers", type=int, help="share: fresh LLM layers (tower, merger, embeddings copied)"
    )
    for name in ("hidden-size", "intermediate-size", "num-attention-heads", "num-key-value-heads"):
        p.add_argument(f"--{name}", type=int, help="share: the student's LLM shape (default: the teacher's)")
    p.add_argument("--seed", type=int, default=0, help="initialisation of the fresh tensors")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow a teacher directory that ships its own Python (auto_map, modeling_*.py); refused otherwise",
    )


def run(args: argparse.Namespace) -> int:
    from pipeline.teacher.student_init import StudentInitSpec, init_student, summary_line

    keep = [int(x) for x in args.keep_layers.split(",")] if args.keep_layers else []
    spec = StudentInitSpec(
        mode="prune" if keep else "share",
        keep_layers=keep,
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        seed=args.seed,
    )
    print(
        summary_line(
            init_student(
                args.teacher,
                args.out,
                spec,
                overwrite=args.overwrite,
                trust_remote_code=args.trust_remote_code,
            )
        )
    )
    return 0
