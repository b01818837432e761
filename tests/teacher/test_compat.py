"""Teacher/student compatibility: identical pairs pass, any tokenizer or processor difference is one
explicit error naming what differs (never silent vocabulary padding)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import gkd_config, write_config


def _cfg(tmp: Path, assets: dict[str, Path], teacher: Path) -> object:
    from pipeline.config import load_config

    return load_config(write_config(tmp / "c.yaml", gkd_config(assets, teacher, tmp / "cache", tmp / "run")))


def test_identical_tokenizers_pass_with_different_logit_widths(
    demo_assets: dict[str, Path], tmp_path: Path
) -> None:
    from pipeline.compat import check_pair

    t_cfg = json.loads((demo_assets["teacher"] / "config.json").read_text())
    s_cfg = json.loads((demo_assets["student"] / "config.json").read_text())
    width = lambda c: c.get("text_config", c)["vocab_size"]  # noqa: E731
    assert width(t_cfg) != width(s_cfg)  # padded embedding rows differ: allowed
    report = check_pair(_cfg(tmp_path, demo_assets, demo_assets["teacher"]))
    assert "compatible" in report and "encode identically" in report


def _variant(src: Path, dst: Path, edit: str) -> Path:
    shutil.copytree(src, dst)
    if edit == "chat_template":
        p = dst / "chat_template.jinja"
        p.write_text(p.read_text().replace("<|im_start|>assistant", "<|im_start|>model"))
    elif edit == "vocab":
        p = dst / "tokenizer.json"
        tok = json.loads(p.read_text())
        vocab = tok["model"]["vocab"]
        a, b = sorted(vocab, key=vocab.get)[300:302]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        p.write_text(json.dumps(tok))
    elif edit == "patch":
        p = dst / "processor_config.json"
        cfg = json.loads(p.read_text())
        ip = cfg.get("image_processor", cfg)
        ip["image_mean"] = [0.5, 0.5, 0.5]
        p.write_text(json.dumps(cfg))
    return dst


@pytest.mark.parametrize(
    ("edit", "needle"), [("chat_template", "chat template"), ("vocab", "vocab"), ("patch", "image_mean")]
)
def test_mismatch_is_an_explicit_error(
    demo_assets: dict[str, Path], tmp_path: Path, edit: str, needle: str
) -> None:
    from pipeline.compat import check_pair
    from pipeline.errors import CompatibilityError

    teacher = _variant(demo_assets["teacher"], tmp_path / "teacher", edit)
    with pytest.raises(CompatibilityError) as err:
        check_pair(_cfg(tmp_path, demo_assets, teacher))
    assert needle in str(err.value)
