"""``distill compare`` and ``distill sweep``: the rows follow params.yaml's runs, and a missing run is an
error naming it. The sweep runs against a stand-in ``dvc`` on PATH that writes each run's metrics."""

from __future__ import annotations

import ast
import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]
RUNS = list(yaml.safe_load((ROOT / "params.yaml").read_text())["runs"])


def _metrics(where: Path, names: list[str], f1: float = 0.5) -> None:
    where.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        recipe = {
            "trainer": "gkd_cached",
            "learning_rate": 0.003,
            "max_steps": 300,
            "beta": 0.0,
            "sft_alpha": 0.5,
        }
        metrics = {"ce": 1.0 + i, "caption_f1": f1 + i / 100, "recipe": recipe}
        (where / f"{name}.json").write_text(json.dumps(metrics))


def test_compare_orders_rows_as_the_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _metrics(tmp_path / "runs", sorted(RUNS))  # written in another order than params.yaml's
    out = tmp_path / "comparison"
    assert (
        main(["compare", str(tmp_path / "runs"), "--runs", str(ROOT / "params.yaml"), "--out", str(out)]) == 0
    )
    table = (out / "comparison.md").read_text().splitlines()
    rows = [line.split("|")[1].strip() for line in table[2:] if line.startswith("|")]
    assert rows == RUNS
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    # the students best on F1 and on CE are named with their recipe; the teacher (listed first) never
    by_f1 = {r: 0.5 + i / 100 for i, r in enumerate(sorted(RUNS))}
    best = max(RUNS[1:], key=by_f1.__getitem__)
    assert (
        f"Student with the highest caption F1: {best} ({by_f1[best]:.4f}; gkd_cached, lr 0.003, beta 0, sft_alpha 0.5)."
        in table
    )
    lowest = min(RUNS[1:], key=by_f1.__getitem__)  # CE grows with F1 in these stand-in metrics
    assert any(line.startswith(f"Student with the lowest CE: {lowest} ") for line in table)


def test_compare_names_the_runs_without_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _metrics(tmp_path / "runs", RUNS[:2])
    argv = [
        "compare",
        str(tmp_path / "runs"),
        "--runs",
        str(ROOT / "params.yaml"),
        "--out",
        str(tmp_path / "c"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert ast.literal_eval(err.rsplit(": ", 1)[1]) == RUNS[2:], err


FAKE_DVC = """#!{python}
# Stand-in for `dvc exp run -S student.seed=N`: every run's metrics, caption F1 = N / 10.
import json, pathlib, sys
seed = int(sys.argv[-1].split("=")[1])
out = pathlib.Path("metrics/runs")
out.mkdir(parents=True, exist_ok=True)
for name in {runs!r}:
    (out / f"{{name}}.json").write_text(json.dumps({{"caption_f1": seed / 10, "ce": 1.0}}))
with open("dvc_calls.txt", "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
"""


def test_sweep_runs_one_experiment_per_seed_and_reports_mean_and_sd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dvc = bin_dir / "dvc"
    dvc.write_text(FAKE_DVC.format(python=sys.executable, runs=RUNS))
    dvc.chmod(dvc.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--seeds", "1", "3", "--params", str(ROOT / "params.yaml")]) == 0
    calls = (tmp_path / "dvc_calls.txt").read_text().splitlines()
    assert calls == ["exp run -S student.seed=1", "exp run -S student.seed=3"]
    result = json.loads((tmp_path / "metrics" / "sweep" / "sweep.json").read_text())
    assert list(result["runs"]) == RUNS
    assert result["runs"]["student_sft"]["caption_f1"] == [0.1, 0.3]
    table = (tmp_path / "metrics" / "sweep" / "sweep.md").read_text()
    assert "| student_sft | 0.200 ± 0.141 |" in table, table
