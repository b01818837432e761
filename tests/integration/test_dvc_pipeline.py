"""The demo DVC pipeline end to end in a temporary git repo, at a reduced size: `dvc repro` (student
initialised from the teacher, both caches, teacher-written pool captions, five students, evaluation on
the test split, comparison table and PNG), then a student sweep with `dvc exp run -S` that must reuse
the teacher caches and the teacher-written captions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.params import entries

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUNS = entries(REPO / "params.yaml", "runs")
METRIC_KEYS = {
    "ce",
    "token_accuracy",
    "caption_f1",
    "caption_precision",
    "caption_recall",
    "hallucination_rate",
}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def test_demo_pipeline_repro_and_sweep_reuse_the_cache(tmp_path: Path) -> None:
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(REPO / name, work / name)
    for name in ("stages", "configs", "pipeline"):
        shutil.copytree(REPO / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["demo"].update(n_train=24, n_val=8, n_test=8, n_labelled=8, n_pool=8)
    params["teacher"]["max_steps"] = 3
    params["student"]["max_steps"] = 2
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # A teacher trained 3 steps rarely stops within a few tokens: keep its unfinished captions.
    written = work / "configs" / "demo" / "student_gkd_written.yaml"
    text = written.read_text().replace("written_max_new_tokens: 64", "written_max_new_tokens: 6")
    written.write_text(text.replace("written_unfinished: skip", "written_unfinished: keep"))

    bin_dir = str(Path(sys.executable).parent)
    markers = tmp_path / "markers.jsonl"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(work),
        "DISTILL_STAGE_MARKERS": str(markers),
        "GIT_AUTHOR_NAME": "pipeline-test",
        "GIT_AUTHOR_EMAIL": "pipeline-test@example.invalid",
        "GIT_COMMITTER_NAME": "pipeline-test",
        "GIT_COMMITTER_EMAIL": "pipeline-test@example.invalid",
        "DVC_NO_ANALYTICS": "1",
    }
    _run(["git", "init", "-q"], work, env)
    _run(["dvc", "init", "-q"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "demo pipeline"], work, env)

    _run(["dvc", "repro"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "repro"], work, env)
    n_markers = len(markers.read_text().splitlines())
    _run(["dvc", "repro"], work, env)  # a second repro does nothing
    assert len(markers.read_text().splitlines()) == n_markers
    _run(["dvc", "exp", "run", "-S", "student.beta=0.1"], work, env)

    ran = Counter(
        json.loads(x)["stage"] + ":" + Path(json.loads(x)["config"]).stem
        for x in markers.read_text().splitlines()
    )
    # The labelled cache and the teacher-written one, never re-run by a student knob.
    assert ran["cache:cache"] == 1 and ran["cache:cache_written"] == 1, ran
    assert ran["export-written:cache_written"] == 1 and ran["init-student:"] == 1, ran
    assert ran["demo-assets:"] == 1 and ran["prepare:"] == 1, ran
    assert ran["resolve:"] == 2, ran  # baseline + the sweep value: it re-resolves every config
    for run in RUNS:
        # baseline + one sweep value for the runs that read student.beta (a student config with an
        # rlhf: block); the teacher and the SFT students read none
        reads_beta = "student" in run.params and load_config(REPO / run.config).rlhf is not None
        want = 2 if reads_beta else 1
        assert ran[f"train:{run.name}"] == want, (run.name, ran)
        assert ran[f"evaluate:{run.name}"] == want, (run.name, ran)
    metrics = work / "metrics" / "runs"
    for run in RUNS:
        m = json.loads((metrics / f"{run.name}.json").read_text())
        assert set(m) >= METRIC_KEYS, (run.name, set(m))
        assert m["split"] == "test", run.name
    table = (work / "metrics" / "comparison" / "comparison.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("|")]
    assert rows == [run.name for run in RUNS], table
    assert "Student with the highest caption F1: student_" in table, table
    assert (work / "metrics" / "comparison" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    status = _run(["dvc", "status"], work, env)
    assert "up to date" in status.lower() or not status.strip(), status
