"""The real architectures' widths through the whole path, on CPU: a Qwen2.5-VL-7B-shaped teacher (head
152,064 wide, untied) and a 3B-shaped student (151,936, tied), real vocabulary and special-token ids,
at reduced depth (2 LLM layers, 2 vision blocks, the second full-attention). ``distill check``,
``cache`` (448 px images, ~200-token captions), one LoRA ``train`` step with the fused loss and
``evaluate``, each a ``distill`` subprocess on the shipped real-size config, as a user runs them.

About 3-7 minutes on 2 shared cores and 6 GB at most (the 7B-shaped teacher's cache job); the full-depth run
is ``distill real-size-assets --depth full`` + ``distill bench real-size`` (docs/guide.md), outside CI.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "real_size" / "stage_2_llm_lora_gkd.yaml"


def distill(*argv: str) -> str:
    """``distill *argv`` in a subprocess; its stdout. Fails the test with the output's tail."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *argv], capture_output=True, text=True, cwd=REPO, env=env
    )
    if proc.returncode != 0:
        pytest.fail(
            f"`distill {' '.join(argv)}` exited {proc.returncode}:\n{(proc.stdout + proc.stderr)[-6000:]}"
        )
    return proc.stdout


@pytest.fixture(scope="module")
def real_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("real_size") / "assets"
    distill("real-size-assets", "--out", str(root), "--depth", "reduced", "--n-train", "2", "--n-val", "1")
    return root


def test_real_width_check_cache_train_evaluate(real_assets: Path, tmp_path: Path) -> None:
    from PIL import Image

    from pipeline.cache.cachedir import CacheDir
    from pipeline.config import load_config, parse_override
    from pipeline.data import Row, read_rows
    from pipeline.encoding import RowEncoder

    summary = json.loads((real_assets / "real_assets.json").read_text())
    assert summary["tokenizer_size"] == 151_665
    assert (summary["teacher"]["head_width"], summary["student"]["head_width"]) == (152_064, 151_936)
    assert (summary["teacher"]["tie_word_embeddings"], summary["student"]["tie_word_embeddings"]) == (
        False,
        True,
    )
    assert summary["teacher"]["layers"] == summary["student"]["layers"] == 2

    sets = [
        f"model.model={real_assets / 'student'}",
        f"rlhf.teacher_model={real_assets / 'teacher'}",
        f"data.dataset=[{real_assets / 'data' / 'train.jsonl'}]",
        f"data.val_dataset=[{real_assets / 'data' / 'val.jsonl'}]",
        f"custom.teacher_cache={tmp_path / 'cache'}",
        f"train.output_dir={tmp_path / 'run'}",
        "train.max_steps=1",
    ]
    args = ["--config", str(CONFIG), *(a for s in sets for a in ("--set", s))]
    cfg = load_config(CONFIG, overrides=dict(parse_override(s) for s in sets))

    # The rows are real-size: 448 px images (256 visual tokens after the 2x2 merge), long captions.
    rows = [r for r in read_rows(cfg.data.dataset[0]) if isinstance(r, Row)]
    encoded = RowEncoder.from_config(cfg).encode(rows[0])
    assert encoded.input_ids.count(151_655) == (448 // 28) ** 2  # <|image_pad|> at its real id
    assert len(encoded.target_positions()) >= 200
    assert Image.open(rows[0].images[0]).size == (448, 448)

    report = distill("check", *args)
    assert "compatible: tokenizer identical (151665 tokens)" in report
    assert "logit widths: teacher 152064 (untied), student 151936 (tied)" in report

    distill("cache", *args)
    cache = CacheDir.of(cfg)
    train_manifest = cache.split("train").manifest()
    assert train_manifest.counts["cached"] == 2 and train_manifest.targets >= 400
    assert cache.split("val").manifest().counts["cached"] == 1

    distill("train", *args)
    run = tmp_path / "run"
    logged = [json.loads(line) for line in (run / "logging.jsonl").read_text().splitlines() if line.strip()]
    step = next(r for r in logged if "train/kl_loss" in r)
    assert step["global_step/max_steps"] == "1/1"
    assert math.isfinite(step["train/kl_loss"]) and step["train/kl_loss"] > 0
    assert math.isfinite(step["train/sft_loss"]) and step["grad_norm"] > 0
    assert (run / "final" / "adapter_config.json").is_file()  # the LoRA stage-2 run, not full tuning

    metrics_path = tmp_path / "metrics.json"
    distill("evaluate", *args, "--out", str(metrics_path))
    metrics = json.loads(metrics_path.read_text())
    assert metrics["rows_scored"] == 1 and metrics["tokens"] >= 200
    assert math.isfinite(metrics["ce"]) and math.isfinite(metrics["kl"]) and metrics["kl_rows"] == 1
