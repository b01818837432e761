"""The sweep driver's plans and selection, on hand-made experiment records (no DVC run)."""

from __future__ import annotations

import pytest

from pipeline.evaluate.sweep import (
    Record,
    SweepSpec,
    choose_learning_rates,
    format_report,
    headline_differences,
    headline_plan,
    selection_plan,
)

SPEC = SweepSpec(
    methods=("sft", "kd"),
    baseline="sft",
    learning_rates=(1e-3, 3e-3),
    select_seeds=(0, 1),
    headline_seeds=(0, 1, 2),
    report_metrics=("caption_f1",),
)
VAL = "metrics/val/{run}.json"
TEST = "metrics/{run}.json"


def _record(
    name: str, lr: dict[str, float], seed: int, val: dict[str, float], test: dict[str, float]
) -> Record:
    params = {f"runs.{m}.learning_rate": v for m, v in lr.items()} | {"student.seed": seed}
    metrics = {(VAL.format(run=m), "caption_f1"): v for m, v in val.items()}
    metrics |= {(TEST.format(run=m), "caption_f1"): v for m, v in test.items()}
    return Record(name, params, metrics)


def test_selection_plan_trains_every_method_at_one_rate_per_experiment() -> None:
    plan = selection_plan(SPEC)
    assert [e.name for e in plan] == ["lr1e-3-s0", "lr1e-3-s1", "lr3e-3-s0", "lr3e-3-s1"]
    assert plan[2].sets == {"runs.sft.learning_rate": 3e-3, "runs.kd.learning_rate": 3e-3, "student.seed": 0}
    assert plan[0].command()[:6] == ["dvc", "exp", "run", "--queue", "--name", "lr1e-3-s0"]
    assert "-S" in plan[0].command() and "student.seed=0" in plan[0].command()


def test_each_method_gets_its_own_best_rate_then_headline_pairs_by_seed() -> None:
    # sft is better at 3e-3, kd at 1e-3 (on val); the test numbers are never used to choose
    grid = [
        _record("a", {"sft": 1e-3, "kd": 1e-3}, 0, {"sft": 0.4, "kd": 0.7}, {"sft": 0.0, "kd": 0.0}),
        _record("b", {"sft": 1e-3, "kd": 1e-3}, 1, {"sft": 0.5, "kd": 0.8}, {"sft": 0.0, "kd": 0.0}),
        _record("c", {"sft": 3e-3, "kd": 3e-3}, 0, {"sft": 0.6, "kd": 0.5}, {"sft": 9.0, "kd": 9.0}),
        _record("d", {"sft": 3e-3, "kd": 3e-3}, 1, {"sft": 0.7, "kd": 0.6}, {"sft": 9.0, "kd": 9.0}),
    ]
    best = choose_learning_rates(grid, SPEC)
    assert best == {"sft": 3e-3, "kd": 1e-3}
    plan = headline_plan(SPEC, best)
    assert [e.sets["student.seed"] for e in plan] == [0, 1, 2]
    assert all(
        e.sets["runs.sft.learning_rate"] == 3e-3 and e.sets["runs.kd.learning_rate"] == 1e-3 for e in plan
    )
    headline = [
        _record(f"best-s{s}", {"sft": 3e-3, "kd": 1e-3}, s, {}, {"sft": f, "kd": f + d})
        for s, f, d in ((0, 0.5, 0.1), (1, 0.6, 0.2), (2, 0.4, 0.3))
    ]
    diffs = headline_differences(grid + headline, SPEC, best)
    d = diffs["kd"]["caption_f1"]
    assert d.mean == pytest.approx(0.2) and [s for s, _ in d.differences] == [0, 1, 2]
    assert "| kd | 0.001 | +0.200 [" in format_report(diffs, SPEC, best)


def test_missing_points_are_errors_not_silent_gaps() -> None:
    one = [_record("a", {"sft": 1e-3, "kd": 1e-3}, 0, {"sft": 0.4, "kd": 0.7}, {})]
    with pytest.raises(ValueError, match="seeds \\(0, 1\\)"):
        choose_learning_rates(one, SPEC)
    with pytest.raises(ValueError, match="selection phase"):
        headline_plan(SPEC, {"sft": 1e-3})
    with pytest.raises(ValueError, match="no test caption_f1 for seeds"):
        headline_differences(one, SPEC, {"sft": 1e-3, "kd": 1e-3})
