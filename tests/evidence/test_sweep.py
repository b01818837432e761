"""The evidence sweep's logic without training: selection reads val only, pairing by seed, skipping
what the results file already holds, and refusing a results file of another setting."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.data import read_rows
from pipeline.evidence.report import curve_rows, format_report, headline_differences, write_curves
from pipeline.evidence.sweep import (
    DistillRunner,
    Point,
    SweepSpec,
    arm_points,
    best_offline,
    choose_learning_rate,
    choose_learning_rates,
    choose_phase_learning_rates,
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
        if p.method.startswith("sft_"):
            peak = {1e-3: 0.5, 3e-3: 0.8, 1e-2: 0.6}
        else:
            peak = {1e-3: 0.5, 3e-3: 0.6, 1e-2: 0.7 if p.method.startswith("gkd_b0_a0") else 0.65}
        f1 = peak[p.lr] + 0.05 * p.seed - (0.3 if p.method == "sft_labels" else 0.0)
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

    grid = len(SPEC.methods) * len(SPEC.learning_rates) * len(SPEC.select_seeds)
    assert grid == 8 * 3 * 2  # beta {0, .5, 1} x sft_alpha {0, .5}, two SFT runs, 3 rates, 2 seeds
    assert ensure(selection_points(SPEC), ["val"], data, runner, save) == grid
    best = choose_learning_rates(data["runs"], SPEC)
    assert best["sft_written"] == best["sft_labels"] == 3e-3
    assert {best[m] for m in SPEC.distillers()} == {1e-2}
    assert all(split == ("val",) for _, split in calls)  # selection never evaluates test
    heads = headline_methods(data["runs"], SPEC, best)
    assert heads == ["sft_written", "sft_labels", "gkd_b0_a0"]  # the best distilling method on val
    ensure(headline_points(SPEC, best, heads), ["test"], data, runner, save)
    # seeds 0 and 1 at the chosen rates were trained in the selection: only their test split ran
    assert calls[grid : grid + 3] == [(f"{m}/lr{best[m]:g}/s0", ("test",)) for m in heads]
    assert len(calls) == grid + 15

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
    assert set(diffs) == {"gkd_b0_a0 - sft_written", "gkd_b0_a0 - sft_labels"}
    f1 = diffs["gkd_b0_a0 - sft_written"]["caption_f1"]
    # the seed shift cancels in the pairs: every difference is exactly 0.7 - 0.8
    assert [round(d, 9) for _, d in f1.differences] == [-0.1] * 5
    assert f1.sd == pytest.approx(0.0, abs=1e-9)
    assert diffs["gkd_b0_a0 - sft_written"]["ce"].mean == pytest.approx(0.0, abs=1e-9)
    assert diffs["gkd_b0_a0 - sft_labels"]["caption_f1"].mean == pytest.approx(0.2)
    report = format_report(again, SPEC)
    assert "Chosen (val): sft_written lr 0.003, sft_labels lr 0.003, gkd_b0_a0 lr 0.01," in report
    assert "Best distiller (val): gkd_b0_a0 at lr 0.01" in report
    assert "| gkd_b0_a0 - sft_written | -0.100 [-0.100, -0.100] (n=5)" in report


def test_headline_refuses_an_unpaired_seed() -> None:
    runs: dict[str, Any] = {}
    best = {m.name: 1e-3 for m in SPEC.methods}
    for m in ("sft_written", "gkd_b0_a0"):
        for seed in SPEC.headline_seeds:
            if m == "gkd_b0_a0" and seed == 4:
                continue
            _put(runs, m, 1e-3, seed, "test", caption_f1=0.5, ce=0.1)
    with pytest.raises(ValueError, match=r"gkd_b0_a0: no test caption_f1 for seeds \[4\]"):
        headline_differences(runs, SPEC, best, methods=["sft_written", "gkd_b0_a0"])
    # the report compares only the seeds every method has
    report = format_report({"setting": dict(SPEC.setting), "runs": runs}, SPEC)
    assert "(selection incomplete" in report


def test_results_of_another_setting_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"setting": {**SPEC.setting, "task": "varied"}, "runs": {}}))
    with pytest.raises(ValueError, match="another --results file"):
        load_results(path, SPEC)


CORRUPT_RESULTS = {
    # name: (file bytes, a phrase of the one-line error)
    "truncated": (b'{"setting": {"task": "exact", "runs"', "not a results file (invalid JSON at line 1"),
    "not utf-8": (b'{"runs": {"\xff": {}}}', "not a results file (not UTF-8"),
    "a list": (b"[]", "expected a JSON object with 'setting' and 'runs', got a list"),
    "runs a list": (b'{"runs": []}', "runs: expected an object of run -> results, got a list"),
    "run a number": (b'{"runs": {"sft_written/lr0.001/s0": 3}}', "runs['sft_written/lr0.001/s0']: expected"),
    "metric a string": (
        b'{"runs": {"sft_written/lr0.001/s0": {"val": {"ce": "low"}}}}',
        "runs['sft_written/lr0.001/s0'].val.ce: expected a number or null, got 'low'",
    ),
}


@pytest.mark.parametrize("case", list(CORRUPT_RESULTS))
def test_a_corrupt_results_file_is_refused_naming_it(tmp_path: Path, case: str) -> None:
    from pipeline.errors import ConfigError

    content, phrase = CORRUPT_RESULTS[case]
    path = tmp_path / "sweep.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_results(path, SPEC)
    assert str(err.value).startswith(f"{path}: ") and phrase in str(err.value), err.value
    assert "\n" not in str(err.value)


def test_results_of_another_teacher_are_refused_and_a_report_takes_the_files(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    assert teacher_digest(teacher) is None
    (teacher / "model.safetensors").write_bytes(b"weights one")
    one = teacher_digest(teacher)
    (teacher / "model.safetensors").write_bytes(b"weights two")
    two = teacher_digest(teacher)
    assert one is not None and two is not None and one != two and len(one) == 16
    path = tmp_path / "sweep.json"
    save_results(path, {"setting": {**SPEC.setting, "teacher": one}, "runs": {}})
    with pytest.raises(ValueError, match="another --results file"):
        load_results(path, replace(SPEC, setting={**SPEC.setting, "teacher": two}))
    assert load_results(path, replace(SPEC, setting={**SPEC.setting, "teacher": one}))["runs"] == {}
    assert load_results(path, SPEC)["setting"]["teacher"] == one  # no teacher here: the file's
    path.write_text(json.dumps({"setting": dict(SPEC.setting), "runs": {}}))  # a file without one
    with pytest.raises(ValueError, match="another --results file"):
        load_results(path, replace(SPEC, setting={**SPEC.setting, "teacher": one}))


def test_phase_continues_the_best_distilling_method_with_and_without_lmbda() -> None:
    runs: dict[str, Any] = {}
    best = {m.name: 1e-3 for m in SPEC.methods} | {"gkd_b0_a0": 3e-3}
    for seed in (0, 1):
        for m, lr in best.items():  # the baseline and the references are never the start
            f1 = {"sft_written": 0.9, "sft_labels": 0.95, "gkd_b0_a0": 0.7}.get(m, 0.6)
            _put(runs, m, lr, seed, "val", caption_f1=f1, ce=0.1)
    start = best_offline(runs, SPEC, best)
    assert start == "gkd_b0_a0"
    on, off = (SPEC.method(arm, start, best[start]) for arm in ("phase_onpolicy", "phase_offline"))
    assert on.start == off.start == "gkd_b0_a0"
    assert on.start_lr == off.start_lr == 3e-3  # both continue from the start's own model
    assert on.sets == {**off.sets, "rlhf.lmbda": SPEC.phase_lmbda}
    # the same pair from the longer runs' students: the start's steps are in the arm's name
    assert phase_arm_groups(SPEC) == [
        ("phase_onpolicy", "phase_offline"),
        ("phase_onpolicy_from600", "phase_offline_from600"),
    ]
    on600 = SPEC.method("phase_onpolicy_from600", start, best[start])
    assert on600.start == "gkd_b0_a0@s600" and on600.start_lr == 3e-3 and on600.sets == on.sets
    assert SPEC.method(on600.start).sets == {**SPEC.method(start).sets, "train.max_steps": 600}
    assert phase_arm_groups(replace(SPEC, long_steps=None)) == [("phase_onpolicy", "phase_offline")]
    assert off.sets["rlhf.lmbda"] == 0.0 and off.sets["rlhf.beta"] == 0.0
    assert off.sets["train.max_steps"] == SPEC.phase_steps
    # each arm picks its continuation rate on val over the phase grid, as a method does over its grid
    grid = phase_selection_points(SPEC)
    assert {p.lr for p in grid} == set(SPEC.phase_learning_rates) and {p.seed for p in grid} == {0, 1}
    for p in grid:
        f1 = 0.8 + (p.lr == 1e-3) * (0.1 if p.method == "phase_onpolicy" else -0.1)
        _put(runs, p.method, p.lr, p.seed, "val", caption_f1=f1, ce=0.1)
    lrs = choose_phase_learning_rates(runs, SPEC)
    assert lrs == {"phase_onpolicy": 1e-3, "phase_offline": 3e-4}  # ties: the lower rate
    assert [p.key for p in phase_points(SPEC, lrs)][:2] == [
        "phase_onpolicy/lr0.001/s0",
        "phase_offline/lr0.0003/s0",
    ]


def test_arms_keep_the_best_setting_and_change_one_thing() -> None:
    best = SPEC.method("gkd_b05_a0")
    live, mixed = SPEC.method("live", best.name), SPEC.method("mixed", best.name)
    assert live.run == "student_gkd_live" and live.sets == best.sets  # the live teacher, not the cache
    assert mixed.run == best.run and mixed.sets == {**best.sets, "rlhf.lmbda": SPEC.mixed_lmbda}
    assert arm_points(SPEC, "live", 3e-3)[0].key == "live/lr0.003/s0"
    assert len(arm_points(SPEC, "live", 3e-3)) == len(SPEC.live_seeds) >= 5
    with pytest.raises(KeyError, match="needs the best"):
        SPEC.method("mixed")


def test_curve_points_are_subsets_of_the_full_pool_at_the_full_pools_rates() -> None:
    best_lr = {"sft_written": 3e-3, "gkd_b0_a0": 1e-3}
    pts = curve_points(SPEC, best_lr, "gkd_b0_a0")
    tags = [f"p{n}" for n in SPEC.pools] + [f"s{n}" for n in SPEC.step_budgets]
    assert {p.method for p in pts} == {f"{m}@{t}" for m in best_lr for t in tags}
    assert all(p.lr == best_lr[p.method.split("@")[0]] for p in pts)
    m = SPEC.method("gkd_b0_a0@p100")
    assert m.pool == 100 and m.run == "student_gkd_written" and m.sets == SPEC.method("gkd_b0_a0").sets
    short = SPEC.method("sft_written@s100")
    assert short.pool is None and short.sets == {"train.max_steps": 100}


def _row(sid: str, caption: str | None) -> str:
    msgs = [{"role": "user", "content": "<image>Describe."}]
    if caption is not None:
        msgs.append({"role": "assistant", "content": caption})
    return json.dumps({"sample_id": sid, "messages": msgs})


def test_pool_subset_takes_the_same_images_from_every_runs_file(tmp_path: Path) -> None:
    # the GKD file orders the pool (labels first); the written file holds the same ids in another order
    gkd = tmp_path / "labelled_pool.jsonl"
    gkd.write_text(
        "\n".join([_row("l0", "a"), _row("l1", "b"), *(_row(f"p{i}", None) for i in range(4))]) + "\n"
    )
    written = tmp_path / "written.jsonl"
    order = ["p2", "l1", "p0", "l0", "p1", "p3"]
    written.write_text("\n".join(_row(s, f"text {s}") for s in order) + "\n")
    params = tmp_path / "params.yaml"
    params.write_text("demo: {n_labelled: 2}\n")
    runner = DistillRunner(SPEC, tmp_path / "work", params)
    for run, path in (("student_gkd_written", gkd), ("student_sft_written", written)):
        cfg = runner.work / "configs" / f"{run}.yaml"
        cfg.parent.mkdir(parents=True, exist_ok=True)
        cfg.write_text(f"data: {{dataset: [{path}]}}\n")
    got = runner.subset("student_sft_written", 2)
    assert [json.loads(line)["sample_id"] for line in got.read_text().splitlines()] == [
        "l1",
        "p0",
        "l0",
        "p1",
    ]
    assert [
        json.loads(line)["sample_id"]
        for line in runner.subset("student_gkd_written", 0).read_text().splitlines()
    ] == [
        "l0",
        "l1",
    ]
    written.write_text("\n".join(_row(s, "t") for s in order[:3]) + "\n")  # p1 missing from the text
    with pytest.raises(ValueError, match="3 of the 5 subset rows"):
        runner.subset("student_sft_written", 3)
    # image paths are relative to the file: the subset, written elsewhere, must still find them
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "l0.png").write_bytes(b"png")
    gkd.write_text(
        json.dumps({**json.loads(_row("l0", "a")), "images": ["img/l0.png"]}) + "\n" + _row("l1", "b") + "\n"
    )
    (runner.work / "data" / "student_gkd_written-p0.jsonl").unlink()
    sub = runner.subset("student_gkd_written", 0)
    assert sub.parent != gkd.parent
    (first,) = [r for r in read_rows(sub) if r.sample_id == "l0"]
    assert [Path(p).resolve() for p in first.images] == [(tmp_path / "img" / "l0.png").resolve()]


def test_curve_tables_csvs_and_png_come_from_the_results_alone(tmp_path: Path) -> None:
    runs: dict[str, Any] = {}
    full_steps = SPEC.setting["max_steps"]
    for s in SPEC.curve_seeds:
        for m, lr, gain in (("sft_written", 3e-3, 0.0), ("gkd_b0_a0", 1e-3, 0.05)):
            for pool in (*SPEC.pools, SPEC.full_pool):
                name = m if pool == SPEC.full_pool else f"{m}@p{pool}"
                grow = pool / 1000
                _put(
                    runs,
                    name,
                    lr,
                    s,
                    "test",
                    caption_f1=0.4 + 0.5 * grow + gain + 0.01 * s,
                    ce=0.3 - 0.2 * grow,
                )
            for steps in SPEC.step_budgets:
                _put(runs, f"{m}@s{steps}", lr, s, "test", caption_f1=0.5 * steps / full_steps + gain, ce=0.2)
    data = {
        "setting": dict(SPEC.setting),
        "runs": runs,
        "best": {"method": "gkd_b0_a0", "lr": 1e-3, "baseline_lr": 3e-3},
    }
    pool_rows = curve_rows(data, SPEC, "pool")
    assert len(pool_rows) == 2 * len(SPEC.curve_seeds) * (len(SPEC.pools) + 1)
    assert {r["steps"] for r in curve_rows(data, SPEC, "steps")} == {*SPEC.step_budgets, full_steps}
    written = write_curves(data, SPEC, tmp_path / "sweep")
    assert [p.name for p in written] == ["sweep_curve_pool.csv", "sweep_curve_steps.csv", "sweep_curves.png"]
    assert written[0].read_text().splitlines()[0] == "pool,method,seed,caption_f1,ce"
    assert written[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_curves({"runs": runs}, SPEC, tmp_path / "none") == []
    # the paired difference at pool 100 is the constant gain: the seed shift cancels
    from pipeline.evidence.report import format_curve

    table = "\n".join(format_curve(data, SPEC, "pool"))
    assert "| 100 | " in table and "+0.050 [+0.050, +0.050] (n=3)" in table


def test_a_phase_run_continues_from_the_start_trained_at_the_starts_own_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = DistillRunner(SPEC, tmp_path / "work", tmp_path / "params.yaml", best="gkd_b0_a05", best_lr=3e-3)
    cfg = runner.work / "configs" / "student_gkd_written.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("data: {dataset: [x.jsonl]}\n")
    trained: list[list[str]] = []

    def call(cmd: list[str], log: Path) -> None:
        if cmd[1] == "train":
            trained.append(cmd)
            sets = dict(a.split("=", 1) for a in cmd[5::2])
            out = Path(sets["train.output_dir"])
            out.mkdir(parents=True)
            (out / "train_time.json").write_text('{"train_wall_s": 1.0}')
        else:
            (runner.work / "init" / "s0").mkdir(parents=True, exist_ok=True)
            (runner.work / "init" / "s0" / "config.json").write_text("{}")

    monkeypatch.setattr(runner, "_call", call)
    out, _ = runner.train(Point("phase_onpolicy", 3e-4, 0))
    start, phase = (dict(a.split("=", 1) for a in cmd[5::2]) for cmd in trained)
    assert start["train.learning_rate"] == "0.003" and start["model.model"].endswith("init/s0")
    assert phase["train.learning_rate"] == "0.0003" and phase["rlhf.lmbda"] == str(SPEC.phase_lmbda)
    assert phase["model.model"] == str(runner.work / "runs" / "gkd_b0_a05" / "lr0.003-s0" / "final")
    assert out == runner.work / "runs" / "phase_onpolicy" / "lr0.0003-s0"


def test_knob_sweep_runs_every_setting_at_its_own_rate_and_pairs_it_with_the_baseline() -> None:
    from pipeline.evidence.report import format_knobs

    best = {m.name: 3e-3 for m in SPEC.methods} | {"gkd_b1_a0": 1e-3}
    pts = knob_points(SPEC, best)
    assert {p.method for p in pts} == {"sft_written", *SPEC.distillers()}  # not the label-only reference
    assert {p.seed for p in pts} == set(SPEC.knob_seeds) and len(SPEC.knob_seeds) >= 3
    assert all(p.lr == best[p.method] for p in pts)
    runs: dict[str, Any] = {}
    for p in pts:
        gain = 0.1 if p.method == "gkd_b0_a0" else 0.0
        _put(runs, p.method, p.lr, p.seed, "test", caption_f1=0.5 + gain + 0.01 * p.seed, ce=0.2 - gain)
    md = "\n".join(format_knobs(runs, SPEC, best))
    (row,) = [ln for ln in md.splitlines() if ln.startswith("| gkd_b0_a0 ")]
    assert "+0.100 [+0.100, +0.100]" in row and "-0.100 [-0.100, -0.100]" in row
    assert "| gkd_b1_a0 (cached GKD, beta 1 (reverse KL), sft_alpha 0) | 0.001 |" in md
    del runs[Point("gkd_b0_a0", 3e-3, 2).key]  # a missing seed drops from every row, never unpaired
    assert "seeds 0, 1;" in "\n".join(format_knobs(runs, SPEC, best))


def test_a_later_phase_keeps_the_on_policy_arms_at_their_val_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`distill evidence select`, `onpolicy`, then `live`: the report still shows the phase arms at the rates
    chosen on val (a later phase rewrites the file's `best` and once dropped the phase's choice)."""
    import pipeline.commands.evidence as command
    import pipeline.evidence.phases as phases
    from pipeline.cli import build_parser

    calls: list[tuple[str, tuple[str, ...]]] = []

    class FakeRunner:
        teacher = tmp_path / "teacher"

        def __init__(self, *args: Any) -> None:
            self.best: str | None = None
            self.best_lr: float | None = None

        def __call__(self, p: Point, splits: Sequence[str]) -> dict[str, dict[str, Any]]:
            calls.append((p.key, tuple(splits)))
            f1 = {3e-4: 0.9, 1e-3: 0.8, 3e-3: 0.7, 1e-2: 0.6}[p.lr] + 0.01 * p.seed
            if not p.method.startswith("phase_"):  # the methods peak at 3e-3, the phase at 3e-4
                f1 = {1e-3: 0.5, 3e-3: 0.8, 1e-2: 0.6}[p.lr] + 0.01 * p.seed
            out: dict[str, dict[str, Any]] = {"train_wall_s": {"value": 10.0}}
            for s in splits:
                out[s] = {"caption_f1": f1, "ce": 1.0 - f1}
            return out

    monkeypatch.setattr(phases, "DistillRunner", FakeRunner)
    monkeypatch.setattr(phases, "teacher_digest", lambda path: "t0")
    params = tmp_path / "params.yaml"
    params.write_text("demo:\n  captions: exact\n")
    results = tmp_path / "sweep.json"
    common = ["--results", str(results), "--params", str(params), "--methods", "gkd_b0_a0"]
    common += ["--seeds", "0", "1", "--pools", "--step-budgets"]
    for phase in ("select", "onpolicy", "live", "long"):
        a = build_parser().parse_args(
            ["evidence", phase, *common, *(["--long-steps", "450"] * (phase == "long"))]
        )
        assert command.run(a) == 0
    assert ("phase_onpolicy/lr0.0003/s1", ("test",)) in calls
    assert ("phase_onpolicy_from600/lr0.0003/s1", ("test",)) in calls  # from the 600-step students
    assert {k for k, _ in calls if "@s450" in k} == {
        f"{m}@s450/lr0.003/s{s}" for m in ("sft_written", "gkd_b0_a0") for s in (0, 1)
    }
    assert ("gkd_b0_a0/lr0.003/s1", ("test",)) in calls  # the 300-step pair it is compared with
    assert not any(k.startswith("phase_") and "lr0.003" in k and s == ("test",) for k, s in calls)
    report = results.with_suffix(".md").read_text()
    assert "lmbda 0.5 (lr 0.0003) vs phase_offline" in report
    assert "| phase_onpolicy | 0.0003 | 0.900 / 0.910 |" in report
    assert "**Continuation rate of each phase arm" in report
    assert "**Longer runs: sft_written and gkd_b0_a0 at 450 steps beside 300" in report
    assert json.loads(results.read_text())["best"]["phase_lr"] == {
        "phase_onpolicy": 3e-4,
        "phase_offline": 3e-4,
    }


def test_long_runs_pair_the_headline_at_more_steps_and_report_the_spread() -> None:
    best_lr = {"sft_written": 3e-3, "gkd_b0_a0": 1e-3}
    pts = long_points(SPEC, best_lr, "gkd_b0_a0")
    assert [p.key for p in pts[:4]] == [
        "sft_written/lr0.003/s0",  # the headline run it is compared with (skipped where it ran)
        "sft_written@s600/lr0.003/s0",
        "gkd_b0_a0/lr0.001/s0",
        "gkd_b0_a0@s600/lr0.001/s0",
    ]
    assert len(pts) == 4 * len(SPEC.long_seeds) and len(SPEC.long_seeds) >= 5
    assert SPEC.method("gkd_b0_a0@s600").sets == {**SPEC.method("gkd_b0_a0").sets, "train.max_steps": 600}
    assert long_points(replace(SPEC, long_steps=None), best_lr, "gkd_b0_a0") == []

    runs: dict[str, Any] = {}
    full = SPEC.setting["max_steps"]
    for s in SPEC.long_seeds:
        collapsed = 0.3 if s == 2 else 0.0  # one seed collapses at the headline's steps only
        for m, gain in (("sft_written", 0.0), ("gkd_b0_a0", 0.02)):
            _put(runs, m, best_lr[m], s, "test", caption_f1=0.9 + gain - collapsed, ce=0.1 - gain)
            _put(runs, f"{m}@s600", best_lr[m], s, "test", caption_f1=0.95 + gain + 0.001 * s, ce=0.05 - gain)
    data = {
        "setting": dict(SPEC.setting),
        "runs": runs,
        "best": {"method": "gkd_b0_a0", "lr": 1e-3, "baseline_lr": 3e-3},
    }
    from pipeline.evidence.report import format_long

    table = "\n".join(format_long(data, SPEC))
    assert f"at 600 steps beside {full}" in table and "seeds 0, 1, 2, 3, 4" in table
    lines = {
        tuple(c.strip() for c in row.split("|")[1:3]): row
        for row in table.splitlines()
        if row.startswith("| ")
    }
    assert "| 0.134 |" in lines[("sft_written", str(full))]  # the collapsed seed's spread
    assert "| 0.002 |" in lines[("gkd_b0_a0", "600")]  # closed at 600 steps
    assert f"at {full} steps caption_f1 +0.020 [+0.020, +0.020] (n=5)" in table
    assert "at 600 steps caption_f1 +0.020 [+0.020, +0.020] (n=5), ce -0.020 [-0.020, -0.020] (n=5)" in table
    # the step curve takes the long runs as its point at 600 (curve seeds only)
    assert {r["steps"] for r in curve_rows(data, SPEC, "steps")} == {full, 600}
    del runs["gkd_b0_a0@s600/lr0.001/s4"]  # an unfinished seed leaves the table on the seeds all four have
    assert "seeds 0, 1, 2, 3:" in "\n".join(format_long(data, SPEC))
