"""Students initialised from the teacher: copied tensors equal the teacher's, the others are new."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.teacher.student_init import StudentInitSpec, init_student


def _load(path: Path) -> dict[str, torch.Tensor]:
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path).state_dict()


@pytest.fixture(scope="module")
def teacher_state(demo_assets: dict[str, Path]) -> dict[str, torch.Tensor]:
    return _load(demo_assets["teacher"])


def test_prune_copies_kept_layers_and_everything_else(
    demo_assets: dict[str, Path], teacher_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    report = init_student(
        demo_assets["teacher"], tmp_path / "s", StudentInitSpec("prune", keep_layers=[0, 3])
    )
    student = _load(tmp_path / "s")
    assert report["fresh"] == []
    assert len([k for k in student if k.startswith("model.language_model.layers.")]) == 2 * 12
    for key, tensor in student.items():
        m = re.match(r"model\.language_model\.layers\.(\d+)\.(.+)", key)
        src = f"model.language_model.layers.{[0, 3][int(m.group(1))]}.{m.group(2)}" if m else key
        assert torch.equal(tensor, teacher_state[src]), key
    # layer 1 of the student is the teacher's layer 3, not its layer 1
    k = "model.language_model.layers.1.mlp.up_proj.weight"
    assert not torch.equal(student[k], teacher_state[k])


def test_share_copies_tower_and_leaves_fresh_layers_new(
    demo_assets: dict[str, Path], teacher_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    report = init_student(demo_assets["teacher"], tmp_path / "s", StudentInitSpec("share", num_layers=2))
    student = _load(tmp_path / "s")
    assert report["groups"]["vision_tower"]["fresh"] == 0 and report["groups"]["merger"]["fresh"] == 0
    for key, tensor in student.items():
        if key.startswith("model.language_model.layers."):
            assert key in report["fresh"]
            if key.endswith("proj.weight"):  # random init, never the teacher's (norms start at ones)
                assert not torch.equal(tensor, teacher_state[key]), key
        else:
            assert torch.equal(tensor, teacher_state[key]), key


def test_share_at_another_width_copies_the_tower_only(
    demo_assets: dict[str, Path], teacher_state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    spec = StudentInitSpec(
        "share",
        num_layers=1,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    report = init_student(demo_assets["teacher"], tmp_path / "s", spec)
    student = _load(tmp_path / "s")
    groups = report["groups"]
    assert groups["vision_tower"] == {"copied": len([k for k in student if _tower(k)]), "fresh": 0}
    assert groups["embeddings"] == {"copied": 0, "fresh": 1} and groups["head"] == {"copied": 0, "fresh": 1}
    assert student["model.visual.merger.mlp.2.weight"].shape[0] == 64  # the merger writes the new width
    assert "model.visual.merger.mlp.2.weight" in report["fresh"]
    for key in student:
        if _tower(key):
            assert torch.equal(student[key], teacher_state[key]), key


def _tower(key: str) -> bool:
    return key.startswith("model.visual.") and not key.startswith("model.visual.merger.")


def test_student_ships_the_teachers_tokenizer_and_check_accepts_the_pair(
    demo_assets: dict[str, Path], tmp_path: Path
) -> None:
    from pipeline.compat import check_pair
    from pipeline.config import load_config
    from tests.conftest import base_config, write_config

    out = tmp_path / "s"
    init_student(demo_assets["teacher"], out, StudentInitSpec("share", num_layers=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json"):
        assert (out / name).read_bytes() == (Path(demo_assets["teacher"]) / name).read_bytes(), name
    raw: dict[str, Any] = base_config(demo_assets, tmp_path / "run")
    raw["model"]["model"] = str(out)
    raw["rlhf"] = {"rlhf_type": "gkd", "teacher_model": str(demo_assets["teacher"])}
    raw["custom"] = {"trainer_variant": "gkd_cached", "teacher_cache": str(tmp_path / "cache")}
    assert check_pair(load_config(write_config(tmp_path / "c.yaml", raw))).startswith("compatible")


def test_bad_specs_are_refused(demo_assets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="keep-layers"):
        init_student(demo_assets["teacher"], tmp_path / "a", StudentInitSpec("prune", keep_layers=[0, 9]))
    with pytest.raises(ConfigError, match="head_dim"):
        init_student(
            demo_assets["teacher"], tmp_path / "b", StudentInitSpec("share", num_layers=1, hidden_size=96)
        )
    with pytest.raises(ConfigError, match="mode"):
        StudentInitSpec("distil")
