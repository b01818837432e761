"""``distill evidence <phase>``: the evidence sweep over one cache (:mod:`pipeline.evidence.phases`).

Each method's learning rate chosen on val over one grid, then the headline comparisons at those rates
on test, paired by seed; the on-policy phase, the live-teacher arm and the learning curve from the best
distiller; tables, CSV and PNG written from the results file (:mod:`pipeline.evidence.report`), which
a rerun resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PHASES = (
    "plan",
    "select",
    "headline",
    "long",
    "knobs",
    "onpolicy",
    "live",
    "mixed",
    "curves",
    "report",
    "all",
)
"""``all`` is every phase that runs something: select, headline, long, knobs, onpolicy, live, mixed,
curves."""

HELP = "the evidence sweep: fair learning rates, paired seeds, on-policy and curves (docs/guide.md)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("phase", choices=PHASES)
    p.add_argument(
        "--results",
        type=Path,
        help="the results file (default docs/evidence/sweep_<task>.json, task: demo.captions)",
    )
    p.add_argument("--work", type=Path, default=Path("runs/sweep"), help="models, logs, resolved configs")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", help="the seeds of the phase(s) run (default: the spec's)")
    p.add_argument("--select-seeds", type=int, nargs="+", help="lr-selection seeds (default 0 1)")
    p.add_argument("--methods", nargs="+", help="only these methods (and the baseline, which always stays)")
    p.add_argument("--curve-seeds", type=int, nargs="+", help="the learning curves' seeds (default 0 1 2)")
    p.add_argument(
        "--pools",
        type=int,
        nargs="*",
        help="the pool curve's smaller pools (default 0 100 300; none: no curve)",
    )
    p.add_argument(
        "--long-steps",
        type=int,
        help="the headline pair's longer runs, at the rates chosen at max_steps (default 600; 0: none)",
    )
    p.add_argument(
        "--step-budgets",
        type=int,
        nargs="*",
        help="the step curve's shorter runs (default 100 200; none: no curve)",
    )


def run(a: argparse.Namespace) -> int:
    from pipeline.evidence.phases import Narrowing, demo_task, plan_lines, run_phases, sweep_spec
    from pipeline.evidence.sweep import load_results

    task = demo_task(a.params)
    narrowing = Narrowing(
        methods=a.methods,
        seeds=a.seeds,
        select_seeds=a.select_seeds,
        curve_seeds=a.curve_seeds,
        pools=a.pools,
        step_budgets=a.step_budgets,
        long_steps=a.long_steps,
    )
    spec = sweep_spec(task, a.phase, narrowing)
    results = a.results or Path("docs/evidence") / f"sweep_{task}.json"
    if a.phase == "plan":
        print("\n".join(plan_lines(spec, load_results(results, spec))))
        return 0
    print(run_phases(a.phase, spec, results, a.work, a.params))
    return 0
