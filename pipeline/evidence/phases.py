"""The evidence sweep's phases, in the order ``distill evidence all`` runs them: choose every method's
rate on val, then the test runs each phase asks for, then the report from the results file.

:mod:`pipeline.commands.evidence` parses the options and calls :func:`sweep_spec` and
:func:`run_phases`; the planning and selection rules are :mod:`pipeline.evidence.sweep`'s, the tables
:mod:`pipeline.evidence.report`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config import load_yaml
from pipeline.errors import ConfigError
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
from pipeline.files import atomic_write

__all__ = ["Narrowing", "demo_task", "plan_lines", "run_phases", "sweep_spec"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Narrowing:
    """What the command line narrows the default sweep to (None: the spec's default)."""

    methods: Sequence[str] | None = None
    seeds: Sequence[int] | None = None
    select_seeds: Sequence[int] | None = None
    curve_seeds: Sequence[int] | None = None
    pools: Sequence[int] | None = None
    step_budgets: Sequence[int] | None = None
    long_steps: int | None = None


def demo_task(params: Path) -> str:
    """The demo task (``demo.captions``) ``params`` builds: the results file and the setting are its."""
    data = load_yaml(params) or {}
    demo = data.get("demo") if isinstance(data, dict) else None
    task = demo.get("captions", "exact") if isinstance(demo, dict) else "exact" if demo is None else demo
    if not isinstance(task, str):
        raise ConfigError(f"{params}: demo.captions must be a task name (exact, varied), got {task!r}")
    return task


def _narrow_methods(spec: SweepSpec, methods: Sequence[str]) -> SweepSpec:
    unknown = sorted(set(methods) - {m.name for m in spec.methods})
    if unknown:
        known = ", ".join(m.name for m in spec.methods)
        raise ConfigError(f"--methods: unknown methods {unknown}; the sweep's methods are {known}")
    keep = {spec.baseline, *methods}
    return replace(
        spec,
        methods=tuple(m for m in spec.methods if m.name in keep),
        references=tuple(r for r in spec.references if r in keep),
    )


def sweep_spec(task: str, phase: str, narrowing: Narrowing) -> SweepSpec:
    """The default sweep at ``task``, against the teacher here (unless the phase only reads results),
    narrowed by the command line."""
    spec = SweepSpec()
    setting = {**spec.setting, "task": task}
    digest = teacher_digest(DistillRunner.teacher) if phase not in ("plan", "report") else None
    if digest is not None:
        setting["teacher"] = digest
    spec = replace(spec, setting=setting)
    n = narrowing
    if n.methods:
        spec = _narrow_methods(spec, n.methods)
    if n.seeds:
        seeds = tuple(n.seeds)
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
    if n.select_seeds:
        spec = replace(spec, select_seeds=tuple(n.select_seeds))
    if n.curve_seeds:
        spec = replace(spec, curve_seeds=tuple(n.curve_seeds))
    if n.pools is not None:
        spec = replace(spec, pools=tuple(n.pools))
    if n.step_budgets is not None:
        spec = replace(spec, step_budgets=tuple(n.step_budgets))
    if n.long_steps is not None:
        spec = replace(spec, long_steps=n.long_steps or None)
    return spec


def _test_points(
    phase: str, spec: SweepSpec, data: dict[str, Any], runner: DistillRunner, save: Any
) -> list[Point]:
    """The rates chosen on val (recorded in ``data["best"]``), and the test runs ``phase`` asks for at
    them; the on-policy arms choose their continuation rates on val here too."""
    best_lr = choose_learning_rates(data["runs"], spec)
    winner = best_offline(data["runs"], spec, best_lr)
    data["best"] = {"method": winner, "lr": best_lr[winner], "baseline_lr": best_lr[spec.baseline]}
    runner.best, runner.best_lr = winner, best_lr[winner]
    every = phase == "all"
    todo: list[Point] = []
    if phase == "headline" or every:
        todo += headline_points(spec, best_lr, headline_methods(data["runs"], spec, best_lr))
    if phase == "long" or every:
        todo += long_points(spec, best_lr, winner)
    if phase == "knobs" or every:
        todo += knob_points(spec, best_lr)
    if phase == "onpolicy" or every:
        # each arm's continuation rate on val first, then both arms at their rates on test; the pair
        # from the longer runs' students too (their start models are trained if missing)
        for arms in phase_arm_groups(spec):
            ensure(phase_selection_points(spec, arms), ["val"], data, runner, save)
            todo += phase_points(spec, choose_phase_learning_rates(data["runs"], spec, arms))
    phase_lr = chosen_phase_rates(data["runs"], spec)
    if phase_lr:  # recorded for readers of the JSON; the report reads the runs
        data["best"]["phase_lr"] = phase_lr
    if phase == "live" or every:
        todo += arm_points(spec, "live", best_lr[winner])
    if phase == "curves" or every:
        todo += curve_points(spec, best_lr, winner)
    if phase == "mixed" or every:
        todo += arm_points(spec, "mixed", best_lr[winner])
    return todo


def plan_lines(spec: SweepSpec, data: Mapping[str, Any]) -> list[str]:
    """One line per selection run: its key and whether its val evaluation is in the results."""
    return [
        f"{pt.key} val {'done' if 'val' in data['runs'].get(pt.key, {}) else 'todo'}"
        for pt in selection_points(spec)
    ]


def run_phases(phase: str, spec: SweepSpec, results: Path, work: Path, params: Path) -> str:
    """Run ``phase`` (resuming from ``results``, which every finished evaluation is saved to at once)
    and rebuild the report, its tables and curves beside ``results``; returns the report."""
    data = load_results(results, spec)
    runner = DistillRunner(spec, work, params)

    def save(d: Mapping[str, Any]) -> None:
        save_results(results, d)

    if phase in ("select", "all"):
        ensure(selection_points(spec), ["val"], data, runner, save)
    if phase not in ("select", "report"):
        ensure(_test_points(phase, spec, data, runner, save), ["test"], data, runner, save)
    report = format_report(data, spec)
    with atomic_write(results.with_suffix(".md")) as fh:
        fh.write(report)
    for path in write_curves(data, spec, results.with_suffix("")):
        log.info("wrote %s", path)
    return report
