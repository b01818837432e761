"""``distill bench real-size``'s parts: per-process peak RSS and the guide's LoRA arithmetic. The whole
bench runs the jobs of tests/integration/test_real_width.py; it is not run here a second time."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_lora_parameter_count_matches_peft(demo_assets: dict[str, Path]) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2_5_VLForConditionalGeneration

    from pipeline.bench.real_size import lora_parameters, model_shape

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(demo_assets["student"])
    linear = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=linear))
    n_lora = sum(p.numel() for name, p in peft.named_parameters() if "lora_" in name)
    assert lora_parameters(model_shape(demo_assets["student"]), 4) == n_lora


def test_run_job_reports_its_own_peak_rss_and_fails_with_the_log(tmp_path: Path) -> None:
    from pipeline.bench.real_size import run_job

    done = run_job(["bench", "--help"], tmp_path / "help.log")
    assert done["wall_s"] > 0 and 0.01 < done["peak_rss_gb"] < 8
    assert "real-size" in (tmp_path / "help.log").read_text()
    with pytest.raises(RuntimeError, match="exited 2") as info:
        run_job(["check", "--config", str(tmp_path / "missing.yaml")], tmp_path / "check.log")
    assert "missing.yaml" in str(info.value)
