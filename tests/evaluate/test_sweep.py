"""The evidence sweep's logic without training: selection reads val only, pairing by seed, skipping
what the results file already holds, and refusing a results file of another setting."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from pipeline.evaluate.sweep import (
    Point,
    SweepSpec,
    best_offline,
    choose_learning_rate,
    choose_learning_rates,
    ensure,
    format_report,
    headline_differences,
    headline_methods,
    headline_points,
    load_results,
    phase_points,
    save_results,
    selection_points,
)

SPEC = SweepSpec()


def _put(runs: dict[str, Any], method: str, lr: float, seed: int, split: str, **metrics: float) -> None:
    runs.setdefault(Point(method, lr, seed).key, {"method": method, "lr": lr, "seed": seed})[split] = metrics


def test_selection_uses_val_and_never_test() -> None:
    runs: dict[str, Any] = {}
    for seed in (0, 1):
        _put(runs, "sft_written", 1e-3, seed, "val", caption_f1=0.5, ce=0.2)
        _put(runs, "sft_written", 3e-3, seed, "val", caption_f1=0.7, ce=0.2)
        _put(runs, "sft_written", 1e-2, seed, "val", caption_f1=0.6, ce=0.1)
        # test says 1e-2 is far better: the choice must not follow it
        _put(runs, "sft_written", 1e-2, seed, "test", caption_f1=0.99, ce=0.01)
    assert choose_learning_rate(runs, SPEC, "sft_written") == 3e-3


def test_selection_means_over_seeds_and_breaks_ties_by_val_ce_then_lower_lr() -> None:
    runs: dict[str, Any] = {}
    # lr 1e-3 wins seed 0 by far but loses on the mean
    _put(runs, "m", 1e-3, 0, "val", caption_f1=0.9, ce=0.3)
    _put(runs, "m", 1e-3, 1, "val", caption_f1=0.1, ce=0.3)
    for seed in (0, 1):
        _put(runs, "m", 3e-3, seed, "val", caption_f1=0.6, ce=0.3)
        _put(runs, "m", 1e-2, seed, "val", caption_f1=0.6, ce=0.2)
    assert choose_learning_rate(runs, SPEC, "m") == 1e-2  # F1 tie with 3e-3, lower CE
    for seed in (0, 1):
        _put(runs, "m", 1e-2, seed, "val", caption_f1=0.6, ce=0.3)
    assert choose_learning_rate(runs, SPEC, "m") == 3e-3  # full tie: the lower rate


def test_selection_refuses_a_missing_seed() -> None:
    runs: dict[str, Any] = {}
    for lr in SPEC.learning_rates:
        _put(runs, "m", lr, 0, "val", caption_f1=0.5, ce=0.2)
    with pytest.raises(ValueError, match=r"seeds \[1\]"):
        choose_learning_rate(runs, SPEC, "m")


def _fake_runner(calls: list[tuple[str, tuple[str, ...]]]) -> Any:
    """F1 grows with lr for GKD and peaks at 3e-3 for SFT; each seed shifts every method alike."""

    def run(p: Point, splits: Sequence[str]) -> dict[str, dict[str, Any]]:
        calls.append((p.key, tuple(splits)))
        peak = (
            {1e-3: 0.5, 3e-3: 0.8, 1e-2: 0.6}
            if p.method == "sft_written"
            else {1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.7 if p.method == "gkd_b0_a0" else 0.65}
        )
        f1 = peak[p.lr] + 0.05 * p.seed
        out: dict[str, dict[str, Any]] = {"train_wall_s": {"value": 40.0 + p.seed}}
        for s in splits:
            out[s] = {"caption_f1": f1, "ce": 1.0 - f1 + (0.0 if p.method == "sft_written" else -0.1)}
        return out

    return run


def test_driver_pairs_by_seed_and_skips_what_is_done(tmp_path: Path) -> None:
    path = tmp_path / "sweep.json"
    data = load_results(path, SPEC)
    calls: list[tuple[str, tuple[str, ...]]] = []
    runner = _fake_runner(calls)

    def save(d: Any) -> None:
        save_results(path, d)

    assert ensure(selection_points(SPEC), ["val"], data, runner, save) == 18
    best = choose_learning_rates(data["runs"], SPEC)
    assert best == {"sft_written": 3e-3, "gkd_b0_a0": 1e-2, "gkd_b05_a05": 1e-2}
    assert all(split == ("val",) for _, split in calls)  # selection never evaluates test
    heads = headline_methods(data["runs"], SPEC, best)
    assert heads == ["sft_written", "gkd_b0_a0"]  # the better distilling method on val
    ensure(headline_points(SPEC, best, heads), ["test"], data, runner, save)
    # seeds 0 and 1 at the chosen rates were trained in the selection: only their test split ran
    assert calls[18:20] == [(f"{m}/lr{best[m]:g}/s0", ("test",)) for m in heads]
    assert len(calls) == 18 + 10

    # a second driver on the saved file runs nothing
    again = load_results(path, SPEC)
    more: list[tuple[str, tuple[str, ...]]] = []
    assert ensure(selection_points(SPEC), ["val"], again, _fake_runner(more), save) == 0
    assert (
        ensure(
            headline_points(SPEC, best, heads),
            ["test"],
            again,
            _fake_runner(more),
            save,
        )
        == 0
    )
    assert more == []

    diffs = headline_differences(again["runs"], SPEC, best, methods=heads)
    f1 = diffs["gkd_b0_a0"]["caption_f1"]
    # the seed shift cancels in the pairs: every difference is exactly 0.7 - 0.8
    assert [round(d, 9) for _, d in f1.differences] == [-0.1] * 5
    assert f1.sd == pytest.approx(0.0, abs=1e-9)
    assert diffs["gkd_b0_a0"]["ce"].mean == pytest.approx(0.0, abs=1e-9)
    report = format_report(again, SPEC)
    assert "Chosen (val): sft_written lr 0.003, gkd_b0_a0 lr 0.01, gkd_b05_a05 lr 0.01." in report
    assert "| gkd_b0_a0 | -0.100 [-0.100, -0.100] (n=5)" in report


def test_headline_refuses_an_unpaired_seed() -> None:
    runs: dict[str, Any] = {}
    best = {"sft_written": 1e-3, "gkd_b0_a0": 1e-3, "gkd_b05_a05": 1e-3}
    for m in best:
        for seed in SPEC.headline_seeds:
            if m == "gkd_b0_a0" and seed == 4:
                continue
            _put(runs, m, 1e-3, seed, "test", caption_f1=0.5, ce=0.1)
    with pytest.raises(ValueError, match=r"gkd_b0_a0: no test caption_f1 for seeds \[4\]"):
        headline_differences(runs, SPEC, best)
    # the report compares only the seeds every method has
    report = format_report({"setting": dict(SPEC.setting), "runs": runs}, SPEC)
    assert "(selection incomplete" in report


def test_results_of_another_setting_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"setting": {**SPEC.setting, "task": "varied"}, "runs": {}}))
    with pytest.raises(ValueError, match="another --results file"):
        load_results(path, SPEC)


def test_phase_continues_the_best_distilling_method_with_and_without_lmbda() -> None:
    runs: dict[str, Any] = {}
    best = {"sft_written": 1e-3, "gkd_b0_a0": 3e-3, "gkd_b05_a05": 1e-3}
    for seed in (0, 1):
        _put(
            runs, "sft_written", 1e-3, seed, "val", caption_f1=0.9, ce=0.1
        )  # the baseline is never the start
        _put(runs, "gkd_b0_a0", 3e-3, seed, "val", caption_f1=0.7, ce=0.1)
        _put(runs, "gkd_b05_a05", 1e-3, seed, "val", caption_f1=0.6, ce=0.1)
    start = best_offline(runs, SPEC, best)
    assert start == "gkd_b0_a0"
    on, off = (SPEC.method(arm, start) for arm in ("phase_onpolicy", "phase_offline"))
    assert on.start == off.start == "gkd_b0_a0"
    assert on.sets == {**off.sets, "rlhf.lmbda": SPEC.phase_lmbda}
    assert off.sets["rlhf.lmbda"] == 0.0 and off.sets["rlhf.beta"] == 0.0
    assert off.sets["train.max_steps"] == SPEC.phase_steps
    assert [p.key for p in phase_points(SPEC, best[start])][:2] == [
        "phase_onpolicy/lr0.003/s0",
        "phase_offline/lr0.003/s0",
    ]
