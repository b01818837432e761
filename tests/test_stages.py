"""Stage scripts are thin and report a ``DistillError`` as the CLI does: one line, exit code 2."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "stages").rglob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[str(s.relative_to(ROOT)) for s in SCRIPTS])
def test_every_stage_script_runs_through_exit_code(script):
    tree = ast.parse(script.read_text())
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "exit_code" in calls, f"{script.name}: call sys.exit(exit_code(main)) so errors print as one line"


@pytest.mark.parametrize(
    "argv",
    [
        ["stages/train_student.py", "--config", "configs/missing.yaml"],
        ["stages/cache_teacher.py", "--config", "configs/missing.yaml"],
        ["stages/evaluate.py", "--config", "configs/missing.yaml", "--out", "unused.json"],
    ],
)
def test_stage_prints_distill_error_as_one_line(argv, tmp_path):
    proc = subprocess.run(
        [sys.executable, *argv, "--params", str(ROOT / "params.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ConfigError: "), proc.stderr
    assert "configs/missing.yaml" in lines[0]
