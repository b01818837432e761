"""``distill``: the command-line entry point.

Every subcommand imports its library lazily, so ``distill --help`` and data-only commands start
fast (importing ms-swift's trainers costs ~10 s and ~1 GB). A ``DistillError`` is printed as one
line and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import exit_code


def _parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set rlhf.beta=0.1`` -> ``{"rlhf.beta": 0.1}`` (values parsed as YAML scalars)."""
    from pipeline.config import parse_override

    return dict(parse_override(item) for item in items or [])


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--limit 0`` or ``-3`` would silently mean "all" or "all but 3")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="YAML config (may inherit: a parent)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. rlhf.beta=0.1"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distill", description=__doc__.split("\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-assets", help="build the tiny local teacher/student models and the demo dataset")
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

    p = sub.add_parser("prepare", help="validate a JSONL dataset and assign stable sample ids")
    p.add_argument("inputs", nargs="+", type=Path, help="JSONL files (one per split)")
    p.add_argument("--out", type=Path, required=True, help="output directory for the prepared splits")

    p = sub.add_parser("train", help="train (SFT or GKD) from a config through ms-swift")
    _add_config(p)

    p = sub.add_parser("check", help="check teacher/student compatibility (tokenizer, template, processor)")
    _add_config(p)

    p = sub.add_parser(
        "export-written", help="write a teacher-written cache's rows, responses filled in, as JSONL"
    )
    _add_config(p)
    p.add_argument("--out", type=Path, required=True, help="JSONL file to write")

    p = sub.add_parser("init-student", help="write a student checkpoint initialised from the teacher")
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

    p = sub.add_parser("cache", help="run the teacher once and cache its top-k distributions")
    _add_config(p)
    p.add_argument("--split", choices=["train", "val", "all"], default="all")
    p.add_argument("--strict", action="store_true", help="fail on the first bad row instead of skipping it")
    p.add_argument(
        "--limit", type=_positive_int, default=None, help="cache only the first N rows of each split (N >= 1)"
    )
    p.add_argument("--dry-run", action="store_true", help="predict rows, tokens, bytes, time; write nothing")

    p = sub.add_parser("inspect", help="summarise, audit or export a teacher cache")
    p.add_argument("cache", type=Path)
    p.add_argument("--sample", help="print a per-token table for this sample_id")
    p.add_argument("--audit", action="store_true", help="check alignment; exit non-zero on a problem")
    p.add_argument(
        "--config",
        type=Path,
        help="re-encode rows with this config (audit, report context; default: the recorded one)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a --config key")
    p.add_argument(
        "--tokenizer",
        type=Path,
        help="tokenizer dir for token text (default: the --config model, else the one recorded in the cache)",
    )
    p.add_argument(
        "--html", type=Path, help="write a self-contained HTML report: index, histograms, images, tokens"
    )
    p.add_argument("--figures", type=Path, help="write histograms.png and histograms.svg into this directory")
    p.add_argument("--compare", type=Path, help="another cache split: summary and histograms side by side")
    p.add_argument("--limit", type=_positive_int, default=50, help="rows shown in full in the --html report")
    p.add_argument(
        "--select",
        help="report rows worst first by p_target (default), tail, entropy, outside, written_limit "
        "(teacher-written rows that hit max_new_tokens) or ids_changed; or sample ids a,b",
    )
    p.add_argument(
        "--export", type=Path, help="write a plain copy: Parquet (.parquet) or an Arrow stream (datasets)"
    )

    p = sub.add_parser("evaluate", help="evaluate a trained student (CE, KL to cache, caption F1)")
    _add_config(p)
    p.add_argument("--checkpoint", type=Path, help="model dir to evaluate (default: the run's final model)")
    p.add_argument("--split", default="val")
    p.add_argument("--out", type=Path, required=True, help="metrics JSON path")

    p = sub.add_parser("bench", help="benchmarks that print measured ratios")
    bsub = p.add_subparsers(dest="bench", required=True)
    b = bsub.add_parser("cache-format", help="bytes/token, fidelity and decode speed of the cache format")
    b.add_argument("--n", type=int, default=50_000)
    b.add_argument("--k", type=int, nargs="+", default=[16, 32, 64, 128])
    b.add_argument("--cache", type=Path, help="also report a real cache directory")
    b = bsub.add_parser("cache-write", help="cache stage vs bare teacher forward on the demo")
    _add_config(b)
    b = bsub.add_parser("train-step", help="SFT vs cached GKD vs live GKD step time and memory")
    _add_config(b)
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    b.add_argument("--out", type=Path, default=Path("runs/bench/train_step"), help="scratch run directory")
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
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "demo-assets":
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
    if cmd == "prepare":
        from pipeline.prepare import prepare_splits

        prepare_splits(args.inputs, args.out)
        return 0
    if cmd in ("train", "check", "cache", "evaluate", "export-written") or (
        cmd == "bench" and args.bench not in ("cache-format", "student-step")
    ):
        from pipeline.config import load_config

        cfg = load_config(args.config, overrides=_parse_sets(args.set))
    if cmd == "train":
        from pipeline.train.launcher import run_training

        run_training(cfg)
        return 0
    if cmd == "export-written":
        from pipeline.teacher.written import export_written

        counts = export_written(Path(cfg.custom.teacher_cache or "") / "train", cfg.data.dataset[0], args.out)
        print(f"{counts['rows']} rows ({counts['teacher_written']} teacher-written) -> {args.out}")
        return 0
    if cmd == "init-student":
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
        print(summary_line(init_student(args.teacher, args.out, spec, overwrite=args.overwrite)))
        return 0
    if cmd == "check":
        from pipeline.teacher.compat import check_config

        print(check_config(cfg))
        return 0
    if cmd == "cache":
        from pipeline.teacher.stage import run_caching

        if args.dry_run:
            from pipeline.teacher.dry_run import run_dry_run

            run_dry_run(cfg, split=args.split, limit=args.limit)
            return 0
        run_caching(cfg, split=args.split, strict=args.strict, limit=args.limit)
        return 0
    if cmd == "inspect":
        from pipeline.config import load_config
        from pipeline.inspection.command import run_inspect

        inspect_cfg = load_config(args.config, overrides=_parse_sets(args.set)) if args.config else None
        return run_inspect(
            args.cache,
            sample=args.sample,
            audit=args.audit,
            cfg=inspect_cfg,
            tokenizer=args.tokenizer,
            html=args.html,
            figures=args.figures,
            compare=args.compare,
            export=args.export,
            limit=args.limit,
            select=args.select,
        )
    if cmd == "evaluate":
        from pipeline.evaluate.run import run_evaluation

        run_evaluation(cfg, checkpoint=args.checkpoint, split=args.split, out=args.out)
        return 0
    if cmd == "bench":
        if args.bench == "cache-format":
            from pipeline.bench.cache_format import bench_cache_format

            bench_cache_format(top_ks=tuple(args.k), n=args.n, real_cache=args.cache)
            return 0
        if args.bench == "cache-write":
            from pipeline.bench.cache_write import bench_cache_write

            bench_cache_write(cfg)
            return 0
        if args.bench == "train-step":
            from pipeline.bench.train_step import bench_train_step

            bench_train_step(
                cfg,
                steps=args.steps,
                config_path=args.config,
                overrides=_parse_sets(args.set),
                rounds=args.rounds,
                out=args.out,
            )
            return 0
        if args.bench == "student-step":
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
            bench_student_step(shape, rounds=args.rounds)
            return 0
    raise AssertionError(f"unhandled command {cmd}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_code(lambda: _dispatch(args))


if __name__ == "__main__":
    sys.exit(main())
