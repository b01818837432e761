"""``distill bench ...``: measurements that print ratios taken side by side in one run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pipeline.commands.options import add_config, load, parse_sets


def _emit(summary: dict[str, Any]) -> int:
    """The bench's result: one JSON line on stdout (its per-round table went to the log, on stderr)."""
    print(json.dumps(summary))
    return 0


HELP = "benchmarks that print measured ratios"


def _cache_format(args: argparse.Namespace) -> int:
    from pipeline.bench.cache_format import bench_cache_format

    out = bench_cache_format(top_ks=tuple(args.k), n=args.n, real_cache=args.cache)
    return _emit({k: v for k, v in out.items() if k not in ("by_k", "real_cache")})


def _cache_write(args: argparse.Namespace) -> int:
    from pipeline.teacher.stage_bench import bench_cache_write, bench_cache_write_incremental

    return _emit((bench_cache_write_incremental if args.incremental else bench_cache_write)(load(args)))


def _dry_run(args: argparse.Namespace) -> int:
    from pipeline.teacher.stage_bench import bench_dry_run

    return _emit(bench_dry_run(load(args), rounds=args.rounds))


def _train_step(args: argparse.Namespace) -> int:
    from pipeline.bench.train_step import bench_train_step

    summary = bench_train_step(
        load(args),
        steps=args.steps,
        config_path=args.config,
        overrides=parse_sets(args.set),
        rounds=args.rounds,
        out=args.out,
    )
    return _emit(summary)


def _encoded_memo(args: argparse.Namespace) -> int:
    from pipeline.bench.encoded_memo import bench_encoded_memo

    load(args)  # the config must load before any subprocess starts
    summary = bench_encoded_memo(
        args.config,
        steps=args.steps,
        rounds=args.rounds,
        overrides=parse_sets(args.set),
        out=args.out,
        mode=args.mode,
    )
    return _emit(summary)


def _student_step(args: argparse.Namespace) -> int:
    from pipeline.bench.student_step import StudentStepShape, bench_student_step

    shape = StudentStepShape(
        hidden=args.hidden,
        vocab=args.vocab,
        seq_len=args.seq_len,
        supervised=args.supervised,
        top_k=args.k,
        dtype=args.dtype,
        chunk_size=args.chunk_size,
        vocab_block=args.vocab_block,
    )
    return _emit(bench_student_step(shape, rounds=args.rounds))


def _real_size(args: argparse.Namespace) -> int:
    from pipeline.bench.real_size import bench_real_size

    load(args)  # the config must load before any subprocess starts
    return _emit(bench_real_size(args.config, sets=args.set, steps=args.steps, out=args.out))


def add_arguments(p: argparse.ArgumentParser) -> None:
    bsub = p.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("cache-format", help="bytes/token, fidelity and decode speed of the cache format")
    b.add_argument("--n", type=int, default=50_000)
    b.add_argument("--k", type=int, nargs="+", default=[16, 32, 64, 128])
    b.add_argument("--cache", type=Path, help="also report a real cache directory")
    b.set_defaults(func=_cache_format)
    b = bsub.add_parser("cache-write", help="cache stage vs bare teacher forward on the demo")
    add_config(b)
    b.add_argument(
        "--incremental",
        action="store_true",
        help="instead: re-caching with 5%% new rows on top of a cache vs a full cache (incremental_over_full)",
    )
    b.set_defaults(func=_cache_write)
    b = bsub.add_parser("dry-run", help="`distill cache --dry-run` predicted over real seconds and bytes")
    add_config(b)
    b.add_argument("--rounds", type=int, default=3)
    b.set_defaults(func=_dry_run)
    b = bsub.add_parser("train-step", help="SFT vs cached GKD vs live GKD step time and memory")
    add_config(b)
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    b.add_argument("--out", type=Path, default=Path("runs/bench/train_step"), help="scratch run directory")
    b.set_defaults(func=_train_step)
    b = bsub.add_parser("encoded-memo", help="a whole training loop with and without kept encodings")
    add_config(b)
    b.add_argument("--steps", type=int, default=150, help="past one epoch, or both modes tie")
    b.add_argument(
        "--mode", choices=["sft", "cached"], default="cached", help="the trainer (train-step's modes)"
    )
    b.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    b.add_argument("--out", type=Path, default=Path("runs/bench/encoded_memo"), help="scratch run directory")
    b.set_defaults(func=_encoded_memo)
    b = bsub.add_parser("student-step", help="student head + loss memory and time: dense vs fused")
    b.add_argument("--hidden", type=int, default=2048)
    b.add_argument("--vocab", type=int, default=151_936)
    b.add_argument("--seq-len", type=int, default=1800)
    b.add_argument("--supervised", type=int, default=500)
    b.add_argument("--k", type=int, default=64)
    b.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    b.add_argument("--chunk-size", type=int, default=256, help="fused: rows per chunk")
    b.add_argument("--vocab-block", type=int, default=8192, help="fused: vocabulary columns per block")
    b.add_argument("--rounds", type=int, default=3)
    b.set_defaults(func=_student_step)
    b = bsub.add_parser(
        "real-size", help="check, cache, train step, evaluate at real shapes: peak RSS, s/token"
    )
    add_config(b)
    b.add_argument("--steps", type=int, default=1, help="training steps")
    b.add_argument("--out", type=Path, default=Path("runs/bench/real_size"), help="scratch dir (replaced)")
    b.set_defaults(func=_real_size)
