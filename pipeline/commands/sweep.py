"""``distill sweep``: ``dvc exp run -S student.seed=N`` for each seed, then mean and sd per run.

Each experiment re-runs only the stages whose resolved config the seed changes (the student's fresh
layers and its training); the teacher, its caches and the teacher-written captions are reused. The
markdown table is the one docs/guide.md quotes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
from pathlib import Path

HELP = "seed sweep of the DVC pipeline: mean and sd of every run's metrics"
KEYS = ("caption_f1", "ce", "train_wall_s")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="whose runs: are collected")
    p.add_argument("--metrics", type=Path, default=Path("metrics/runs"), help="where <run>.json files land")
    p.add_argument("--out", type=Path, default=Path("metrics/sweep"), help="sweep.{json,md} go here")


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def run(args: argparse.Namespace) -> int:
    from pipeline.params import run_names

    runs = run_names(args.params)
    results: dict[str, dict[str, list[float]]] = {r: {k: [] for k in KEYS} for r in runs}
    for seed in args.seeds:
        subprocess.run(["dvc", "exp", "run", "-S", f"student.seed={seed}"], check=True)
        for name in runs:
            m = json.loads((args.metrics / f"{name}.json").read_text())
            for k in KEYS:
                if m.get(k) is not None:
                    results[name][k].append(float(m[k]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps({"seeds": args.seeds, "runs": results}, indent=2) + "\n")
    lines = ["| run | caption F1 (test) | CE (test) | train wall-clock s |", "|---|---|---|---|"]
    lines += [f"| {r} | " + " | ".join(_mean_sd(results[r][k]) for k in KEYS) + " |" for r in runs]
    (args.out / "sweep.md").write_text(f"mean ± sd over seeds {args.seeds}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0
