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
from pipeline.trust import STUDENT_KEY, remote_code_reason, require_trusted
from tests.conftest import base_config, gkd_config, write_config


def _booby_trapped(src: Path, dst: Path, marker: Path) -> Path:
    """A copy of ``src`` whose config names shipped code that writes ``marker`` when imported."""
    shutil.copytree(src, dst)
    code = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    code += "from transformers import Qwen2_5_VLConfig as TrappedConfig\n"
    (dst / "configuration_trapped.py").write_text(code)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_trapped.TrappedConfig"}
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_the_directory_check_names_what_would_run(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    assert remote_code_reason(plain) is None
    require_trusted(plain, False, STUDENT_KEY)
    (plain / "modeling_x.py").write_text("")
    assert remote_code_reason(plain) == "modeling_x.py"
    (plain / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["x.T", None]}}))
    assert remote_code_reason(plain) == "tokenizer_config.json: auto_map"
    with pytest.raises(ConfigError, match=r"ships its own Python .*set model\.trust_remote_code: true"):
        require_trusted(plain, False, STUDENT_KEY)
    require_trusted(plain, True, STUDENT_KEY)  # trusted: loads as before


def _distill(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_no_command_runs_shipped_code_unless_trusted(demo_assets: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    student = _booby_trapped(demo_assets["student"], tmp_path / "student", marker)
    teacher = _booby_trapped(demo_assets["teacher"], tmp_path / "teacher", marker)
    assets: dict[str, Any] = {**demo_assets, "student": student}
    sft = write_config(tmp_path / "sft.yaml", base_config(assets, tmp_path / "out"))
    gkd = write_config(
        tmp_path / "gkd.yaml", gkd_config(assets, teacher, tmp_path / "cache", tmp_path / "out2")
    )
    runs = {
        "train": ("train", "--config", str(sft)),
        "evaluate": (
            "evaluate",
            "--config",
            str(sft),
            "--checkpoint",
            str(student),
            "--out",
            str(tmp_path / "m.json"),
        ),
        "check": ("check", "--config", str(gkd)),
        "cache": ("cache", "--config", str(gkd)),
        "init-student": (
            "init-student",
            "--teacher",
            str(teacher),
            "--out",
            str(tmp_path / "s2"),
            "--num-layers",
            "1",
        ),
    }
    root = Path(__file__).resolve().parents[1]
    for name, args in runs.items():
        done = _distill(*args, cwd=root)
        assert done.returncode == 2, (name, done.stderr[-2000:])
        last = done.stderr.strip().splitlines()[-1]
        assert "ships its own Python (config.json: auto_map)" in last, (name, last)
        assert "Traceback" not in done.stderr, name
        assert not marker.exists(), f"distill {name} ran the directory's code"


def test_inspect_tokenizer_refuses_shipped_code(demo_assets: dict[str, Path], tmp_path: Path) -> None:
    from pipeline.inspection.sources import load_tokenizer

    marker = tmp_path / "marker"
    student = _booby_trapped(demo_assets["student"], tmp_path / "student", marker)
    with pytest.raises(ConfigError, match=r"ships its own Python \(config\.json: auto_map\)"):
        load_tokenizer(student)
    assert not marker.exists()
    assert load_tokenizer(demo_assets["student"]) is not None  # a plain directory loads as before


def test_a_hub_id_without_a_slash_is_refused_before_any_download() -> None:
    from pipeline.config import model_location

    with pytest.raises(
        ConfigError, match=r"model\.model: 'qwen-vl' is neither a local directory nor a hub id"
    ):
        model_location("qwen-vl", "model.model")
    assert model_location("Qwen/Qwen2.5-VL-3B-Instruct", "model.model") == "Qwen/Qwen2.5-VL-3B-Instruct"
