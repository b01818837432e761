"""``distill bench student-step`` at a tiny shape: the JSON line's keys and that both sides ran."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main

KEYS = {
    "dense_peak_mb", "fused_peak_mb", "peak_ratio", "dense_step_s", "fused_step_s", "time_ratio",
    "dense_total_peak_mb", "fused_total_peak_mb", "params_mb", "grads_mb", "chunk_size", "vocab_block",
    "weight_dtype", "loss_dtype", "hidden", "vocab", "seq_len", "supervised", "top_k", "rounds",
}  # fmt: skip


def test_student_step_bench_prints_its_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "student-step", "--hidden", "32", "--vocab", "3000", "--seq-len", "120"]
    argv += ["--supervised", "40", "--k", "8", "--chunk-size", "16", "--vocab-block", "512", "--rounds", "1"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(out) >= KEYS
    assert out["vocab"] == 3000 and out["rounds"] == 1 and out["weight_dtype"] == "float32"
    assert out["dense_step_s"] > 0 and out["fused_step_s"] > 0
    assert out["grads_mb"] == pytest.approx((3000 * 32 + 120 * 32) * 4 / 2**20)
    # the two sides compute the same loss on the same synthetic data
    assert out["loss_abs_diff"] <= 1e-4
