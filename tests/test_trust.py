"""A model directory's own Python runs only when the config trusts it (ms-swift's loader would always run it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ConfigError
from pipeline.trust import STUDENT_KEY, TEACHER_KEY, remote_code_reason, require_trusted
from tests.conftest import base_config, gkd_config, write_config

REPO = Path(__file__).resolve().parents[1]
REFUSED = "ships its own Python (config.json: auto_map)"


def _booby_trapped(src: Path, dst: Path, marker: Path) -> Path:
    """A copy of ``src`` whose config names shipped code that writes ``marker`` when imported (and
    then behaves as the stock Qwen2.5-VL config, so a trusted load goes on as before)."""
    shutil.copytree(src, dst)
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    code += "from transformers import Qwen2_5_VLConfig as TrappedConfig\n"
    (dst / "configuration_trapped.py").write_text(code)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_trapped.TrappedConfig"}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture
def trapped(demo_assets: dict[str, Path], tmp_path: Path) -> dict[str, Any]:
    """Booby-trapped student and teacher, an SFT and a cached-GKD config over them, and the marker."""
    marker = tmp_path / "marker"
    student = _booby_trapped(demo_assets["student"], tmp_path / "student", marker)
    teacher = _booby_trapped(demo_assets["teacher"], tmp_path / "teacher", marker)
    assets: dict[str, Any] = {**demo_assets, "student": student}
    sft = write_config(tmp_path / "sft.yaml", base_config(assets, tmp_path / "out"))
    gkd = write_config(
        tmp_path / "gkd.yaml", gkd_config(assets, teacher, tmp_path / "cache", tmp_path / "out2")
    )
    return {"marker": marker, "student": student, "teacher": teacher, "sft": sft, "gkd": gkd}


def test_the_directory_check_names_what_would_run(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert remote_code_reason(plain) is None
    require_trusted(plain, False, STUDENT_KEY)
    (plain / "modeling_x.py").write_text("")  # no auto_map: ms-swift imports some files by name
    assert remote_code_reason(plain) == "modeling_x.py"
    (plain / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["x.T", None]}}))
    assert remote_code_reason(plain) == "tokenizer_config.json: auto_map"
    with pytest.raises(ConfigError, match=r"ships its own Python .*set model\.trust_remote_code: true"):
        require_trusted(plain, False, STUDENT_KEY)
    with pytest.raises(ConfigError, match=r"pass --trust-remote-code if you trust"):
        require_trusted(plain, False, "--trust-remote-code")
    require_trusted(plain, True, STUDENT_KEY)  # trusted: loads as before


def test_a_hub_model_is_looked_at_before_ms_swift_loads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    swift_utils = pytest.importorskip("swift.utils")
    shipped = tmp_path / "snapshot"
    shipped.mkdir()
    (shipped / "config.json").write_text(json.dumps({"auto_map": {"AutoConfig": "c.C"}}))
    fetched: list[tuple[str, bool]] = []

    def fake_snapshot(model_id: str, download_model: bool = True, **_: Any) -> str:
        fetched.append((model_id, download_model))
        return str(shipped)

    monkeypatch.setattr(swift_utils, "safe_snapshot_download", fake_snapshot)
    with pytest.raises(
        ConfigError, match=r"^Org/Model: .*\(config\.json: auto_map\).*teacher_trust_remote_code"
    ):
        require_trusted("Org/Model", False, TEACHER_KEY)
    assert fetched == [("Org/Model", False)]  # config and code files only, never the weights
    require_trusted("Org/Model", True, TEACHER_KEY)
    assert len(fetched) == 1  # trusted: nothing fetched ahead of ms-swift


def test_every_loader_refuses_before_loading(trapped: dict[str, Any], tmp_path: Path) -> None:
    """The real call paths of check, cache, train, evaluate, inspect and init-student, in process."""
    from pipeline.compat import check_pair
    from pipeline.config import load_config
    from pipeline.encoding import RowEncoder
    from pipeline.inspection.sources import load_tokenizer, resolve_tokenizer
    from pipeline.models import load_teacher, load_trained
    from pipeline.teacher.student_init import StudentInitSpec, init_student
    from pipeline.train.swift_args import to_swift_args

    sft, gkd = load_config(trapped["sft"]), load_config(trapped["gkd"])
    student_only = load_config(trapped["gkd"], {"custom.teacher_trust_remote_code": True})
    spec = StudentInitSpec(mode="share", num_layers=1)
    calls = {
        "encoder (cache, train, inspect)": (lambda: RowEncoder.from_config(sft), STUDENT_KEY),
        "check_pair, teacher": (lambda: check_pair(gkd), TEACHER_KEY),
        "check_pair, student": (lambda: check_pair(student_only), STUDENT_KEY),
        "load_teacher (cache, live teacher)": (lambda: load_teacher(gkd), TEACHER_KEY),
        "load_trained (evaluate)": (lambda: load_trained(sft, trapped["student"]), STUDENT_KEY),
        "to_swift_args (train)": (lambda: to_swift_args(sft), STUDENT_KEY),
        "load_tokenizer (--tokenizer)": (lambda: load_tokenizer(trapped["student"]), STUDENT_KEY),
        "resolve_tokenizer (inspect --config)": (
            lambda: resolve_tokenizer({}, trapped["student"], sft),
            STUDENT_KEY,
        ),
        "init_student": (
            lambda: init_student(trapped["teacher"], tmp_path / "init", spec),
            "--trust-remote-code",
        ),
    }
    for name, (call, key) in calls.items():
        with pytest.raises(ConfigError) as info:
            call()
        assert REFUSED in str(info.value) and key in str(info.value), (name, str(info.value))
        assert not trapped["marker"].exists(), f"{name} ran the directory's code"
    assert not (tmp_path / "init").exists()


def _distill(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_no_command_runs_shipped_code_unless_trusted(trapped: dict[str, Any], tmp_path: Path) -> None:
    from tests.cache.test_export import _cache

    marker, student = trapped["marker"], trapped["student"]
    sft, gkd = str(trapped["sft"]), str(trapped["gkd"])
    cache = _cache(tmp_path / "some_cache")  # inspect reads a cache first, then the tokenizer
    runs = {
        "check": ("check", "--config", gkd),
        "cache": ("cache", "--config", gkd),
        "train": ("train", "--config", sft),
        "evaluate": ("evaluate", "--config", sft, "--checkpoint", str(student), "--out", str(tmp_path / "m.json")),
        "inspect --tokenizer": ("inspect", str(cache), "--tokenizer", str(student)),
        "init-student": (
            "init-student", "--teacher", str(trapped["teacher"]), "--out", str(tmp_path / "s2"), "--num-layers", "1"
        ),
    }  # fmt: skip
    for name, args in runs.items():
        done = _distill(*args)
        assert done.returncode == 2, (name, done.stderr[-2000:])
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ConfigError: ") and REFUSED in last, (name, last)
        assert "Traceback" not in done.stderr, name
        assert not marker.exists(), f"distill {name} ran the directory's code"
    # The keys lift the refusal: the check loads both sides as before, and the shipped code runs.
    trust = ("--set", "model.trust_remote_code=true", "--set", "custom.teacher_trust_remote_code=true")
    done = _distill("check", "--config", gkd, *trust)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "compatible: tokenizer identical" in done.stdout
    assert marker.read_text() == "ran"  # the trap is real: trusted, ms-swift executes it
