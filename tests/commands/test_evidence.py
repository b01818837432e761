"""``distill evidence``: the task comes from params.yaml, ``--methods`` narrows the sweep, and
``report`` rebuilds the tables from the results file alone, running nothing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.commands.evidence import add_arguments
from pipeline.errors import ConfigError
from pipeline.evidence.phases import Narrowing, demo_task, sweep_spec
from pipeline.evidence.sweep import Point, SweepSpec


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def _spec(a: argparse.Namespace) -> SweepSpec:
    """The spec ``distill evidence`` builds from these options."""
    fields = ("methods", "seeds", "select_seeds", "curve_seeds", "pools", "step_budgets", "long_steps")
    return sweep_spec(demo_task(a.params), a.phase, Narrowing(**{f: getattr(a, f) for f in fields}))


def test_the_task_is_the_params_demo_captions_and_names_the_results(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("demo: {captions: varied}\n")
    a = _args("plan", "--params", str(params), "--methods", "gkd_b0_a0")
    spec = _spec(a)
    assert spec.setting["task"] == "varied"
    assert [m.name for m in spec.methods] == ["sft_written", "gkd_b0_a0"] and spec.references == ()
    assert _spec(_args("plan", "--params", str(params))).references == ("sft_labels",)
    with pytest.raises(
        ConfigError, match=r"--methods: unknown methods \['gkd_b2'\]; the sweep's methods are"
    ):
        _spec(_args("plan", "--params", str(params), "--methods", "gkd_b2"))


def test_a_params_file_with_a_yaml_tag_or_a_bad_task_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The params file is read the way every config is (tags refused, errors in one line naming it)."""
    params = tmp_path / "params.yaml"
    params.write_text("demo: !!python/object/apply:os.system [echo hi]\n")
    assert main(["evidence", "plan", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(params) in err
    params.write_text("demo: {captions: [exact]}\n")
    assert main(["evidence", "plan", "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "demo.captions must be a task name" in err


def test_report_rebuilds_the_tables_from_the_results_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("demo: {captions: exact}\n")
    spec = SweepSpec()
    runs = {}
    for m in spec.methods:
        for lr in spec.learning_rates:
            for s in spec.select_seeds:
                f1 = 0.9 if (m.name == "gkd_b0_a0" and lr == 3e-3) else 0.5
                runs[Point(m.name, lr, s).key] = {"val": {"caption_f1": f1, "ce": 0.1}}
    results = tmp_path / "sweep.json"
    results.write_text(json.dumps({"setting": dict(spec.setting), "runs": runs}))
    assert main(["evidence", "report", "--params", str(params), "--results", str(results)]) == 0
    md = (tmp_path / "sweep.md").read_text()
    assert "Best distiller (val): gkd_b0_a0 at lr 0.003" in md
    assert json.loads(results.read_text())["runs"] == runs  # the report trains and records nothing


def test_report_on_a_corrupt_results_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("demo: {captions: exact}\n")
    results = tmp_path / "sweep.json"
    results.write_text('{"setting": {"task": "exact"}, "runs": {"a": {"val": {"ce": 0.1')  # cut mid-write
    assert main(["evidence", "report", "--params", str(params), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: ConfigError: {results}: not a results file")
    assert not (tmp_path / "sweep.md").exists()


def test_curve_options_narrow_the_curves_and_leave_the_headline_seeds(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("demo: {captions: exact}\n")
    spec = _spec(
        _args(
            "curves", "--params", str(params), "--curve-seeds", "0", "1", "--pools", "100", "--step-budgets"
        )
    )
    assert spec.curve_seeds == (0, 1) and spec.pools == (100,) and spec.step_budgets == ()
    assert spec.headline_seeds == SweepSpec().headline_seeds
    default = _spec(_args("curves", "--params", str(params)))
    assert (default.pools, default.step_budgets) == (SweepSpec().pools, SweepSpec().step_budgets)


def test_a_full_disk_while_the_evidence_is_saved_is_one_line_and_keeps_the_last_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The results file and its report are rewritten whole: a full disk leaves the last complete
    version of each and no temporary file, and the rerun writes them."""
    import errno
    import os

    import pipeline.files as files
    from pipeline.evidence.sweep import save_results

    params = tmp_path / "params.yaml"
    params.write_text("demo: {captions: exact}\n")
    spec = SweepSpec()
    results = tmp_path / "sweep.json"
    data = {"setting": dict(spec.setting), "runs": {Point("sft_written", 3e-3, 0).key: {"val": {"ce": 0.1}}}}
    save_results(results, data)
    before = results.read_bytes()
    (tmp_path / "sweep.md").write_text("last report\n")
    real_replace = os.replace

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "replace", full)
    with pytest.raises(files.DiskFullError, match=rf"^{results}: no space left on device"):
        save_results(results, {**data, "runs": {}})
    assert main(["evidence", "report", "--params", str(params), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: DiskFullError: {tmp_path / 'sweep.md'}")
    assert results.read_bytes() == before and (tmp_path / "sweep.md").read_text() == "last report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "sweep.json", "sweep.md"]
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert main(["evidence", "report", "--params", str(params), "--results", str(results)]) == 0
    assert (tmp_path / "sweep.md").read_text() != "last report\n"
