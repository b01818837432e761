"""``distill evidence <phase>``: the evidence sweep over one cache (:mod:`pipeline.evidence.sweep`).

Each method's learning rate chosen on val over one grid, then the headline comparisons at those rates
on test, paired by seed; the on-policy phase, the live-teacher arm and the learning curve from the best
distiller; tables, CSV and PNG written from the results file (:mod:`pipeline.evidence.report`), which
a rerun resumes.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.evidence.report import format_report, write_curves
from pipeline.evidence.sweep import (
    DistillRunner,
    Point,
    SweepSpec,
    arm_points,
    best_offline,
    choose_learning_rates,
    choose_phase_learning_rates,
    chosen_phase_rates,
    curve_points,
    ensure,
    headline_methods,
    headline_points,
    knob_points,
    load_results,
    long_points,
    phase_arm_groups,
    phase_points,
    phase_selection_points,
    save_results,
    selection_points,
    teacher_digest,
)

HELP = "the evidence sweep: fair learning rates, paired seeds, on-policy and curves (docs/guide.md)"

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


def _spec(a: argparse.Namespace) -> SweepSpec:
    """The default sweep at the demo task ``--params`` builds (``demo.captions``), narrowed by the options."""
    import yaml

    task = (yaml.safe_load(a.params.read_text()).get("demo") or {}).get("captions", "exact")
    spec = SweepSpec()
    setting = {**spec.setting, "task": task}
    digest = teacher_digest(DistillRunner.teacher) if a.phase not in ("plan", "report") else None
    if digest is not None:
        setting["teacher"] = digest
    spec = replace(spec, setting=setting)
    if a.results is None:
        a.results = Path("docs/evidence") / f"sweep_{task}.json"
    if a.methods:
        unknown = sorted(set(a.methods) - {m.name for m in spec.methods})
        if unknown:
            raise SystemExit(f"unknown methods {unknown}")
        keep = {spec.baseline, *a.methods}
        spec = replace(
            spec,
            methods=tuple(m for m in spec.methods if m.name in keep),
            references=tuple(r for r in spec.references if r in keep),
        )
    if a.seeds:
        seeds = tuple(a.seeds)
        spec = replace(
            spec,
            headline_seeds=seeds,
            phase_seeds=seeds,
            live_seeds=seeds,
            mixed_seeds=seeds,
            curve_seeds=seeds,
            knob_seeds=seeds,
            long_seeds=seeds,
        )
    if a.select_seeds:
        spec = replace(spec, select_seeds=tuple(a.select_seeds))
    if a.curve_seeds:
        spec = replace(spec, curve_seeds=tuple(a.curve_seeds))
    if a.pools is not None:
        spec = replace(spec, pools=tuple(a.pools))
    if a.step_budgets is not None:
        spec = replace(spec, step_budgets=tuple(a.step_budgets))
    if a.long_steps is not None:
        spec = replace(spec, long_steps=a.long_steps or None)
    return spec


def run(a: argparse.Namespace) -> int:
    spec = _spec(a)
    data = load_results(a.results, spec)
    runner = DistillRunner(spec, a.work, a.params)

    def save(d: Mapping[str, Any]) -> None:
        save_results(a.results, d)

    if a.phase == "plan":
        for pt in selection_points(spec):
            print(pt.key, "val", "done" if "val" in data["runs"].get(pt.key, {}) else "todo")
        return 0
    if a.phase in ("select", "all"):
        ensure(selection_points(spec), ["val"], data, runner, save)
    if a.phase not in ("select", "report"):
        best_lr = choose_learning_rates(data["runs"], spec)
        winner = best_offline(data["runs"], spec, best_lr)
        data["best"] = {"method": winner, "lr": best_lr[winner], "baseline_lr": best_lr[spec.baseline]}
        runner.best, runner.best_lr = winner, best_lr[winner]
        todo: list[Point] = []
        if a.phase in ("headline", "all"):
            todo += headline_points(spec, best_lr, headline_methods(data["runs"], spec, best_lr))
        if a.phase in ("long", "all"):
            todo += long_points(spec, best_lr, winner)
        if a.phase in ("knobs", "all"):
            todo += knob_points(spec, best_lr)
        if a.phase in ("onpolicy", "all"):
            # each arm's continuation rate on val first, then both arms at their rates on test; the pair
            # from the longer runs' students too (their start models are trained if missing)
            for arms in phase_arm_groups(spec):
                ensure(phase_selection_points(spec, arms), ["val"], data, runner, save)
                todo += phase_points(spec, choose_phase_learning_rates(data["runs"], spec, arms))
        phase_lr = chosen_phase_rates(data["runs"], spec)
        if phase_lr:  # recorded for readers of the JSON; the report reads the runs
            data["best"]["phase_lr"] = phase_lr
        if a.phase in ("live", "all"):
            todo += arm_points(spec, "live", best_lr[winner])
        if a.phase in ("curves", "all"):
            todo += curve_points(spec, best_lr, winner)
        if a.phase in ("mixed", "all"):
            todo += arm_points(spec, "mixed", best_lr[winner])
        ensure(todo, ["test"], data, runner, save)
    report = format_report(data, spec)
    a.results.with_suffix(".md").write_text(report)
    for path in write_curves(data, spec, a.results.with_suffix("")):
        print("wrote", path)
    print(report)
    return 0
