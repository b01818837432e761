"""What `distill cache` shows: by default the progress bars, the plan, warnings that matter and the
summary (a handful of lines, not ms-swift's INFO chatter); `--quiet` shows nothing on success and the
error line alone on failure; each model directory is loaded once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import gkd_config, write_config

BAR = re.compile(r"\d+%\|")  # a tqdm frame: "cache train:  50%|█████     | 24/48 ..."
MAX_LINES = 15


def _cache(config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LOG_LEVEL", "TRANSFORMERS_VERBOSITY")}
    cmd = [sys.executable, "-m", "pipeline.cli", *flags, "cache", "--config", str(config)]
    return subprocess.run(cmd, capture_output=True, text=True, env={**env, "OMP_NUM_THREADS": "1"})


def _lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """Every line of stdout and stderr but the progress bars' frames."""
    text = (proc.stdout + proc.stderr).replace("\r", "\n")
    return [ln for ln in text.splitlines() if ln.strip() and not BAR.search(ln)]


@pytest.mark.slow
def test_the_default_console_is_short_and_quiet_is_silent(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.yaml", gkd_config(demo_assets, tiny_teacher, tmp_path / "cache", tmp_path / "run")
    )
    default = _cache(config)
    shown = _lines(default)
    assert default.returncode == 0, "\n".join(shown)
    assert len(shown) <= MAX_LINES, "\n".join(shown)
    assert any(ln.startswith("[cache train]") and "rows in" not in ln for ln in shown), shown
    assert not [ln for ln in shown if "You can adjust this hyperparameter" in ln], shown
    verbose = _lines(_cache(config, "--verbose"))
    (Path(tmp_path) / "verbose.txt").write_text("\n".join(verbose))
    assert len(verbose) > len(shown) and any("INFO" in ln for ln in verbose)
    for model in (tiny_teacher, demo_assets["student"]):
        loads = [ln for ln in verbose if "Loading model from" in ln and str(model) in ln]
        # the student's processor once; the teacher's for the pair check, then with its weights
        assert 1 <= len(loads) <= (2 if model == tiny_teacher else 1), loads

    quiet = _cache(config, "--quiet")
    assert quiet.returncode == 0 and (quiet.stdout + quiet.stderr).strip() == ""
    broken = write_config(
        tmp_path / "b.yaml",
        {**gkd_config(demo_assets, tiny_teacher, tmp_path / "c2", tmp_path / "r2"), "bogus": 1},
    )
    failed = _cache(broken, "--quiet")
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert failed.stderr.startswith("error: ConfigError:")
