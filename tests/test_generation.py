"""The generation loop: batched greedy equals one row at a time, stop ids come from the template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.data import Row, read_rows
from pipeline.errors import ConfigError
from pipeline.generation import SamplingSettings, generate, split_completion, stop_token_ids


@pytest.fixture(scope="module")
def teacher_and_encoder(demo_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from swift.model import get_model_processor

    from pipeline.config import load_config
    from pipeline.encoding import RowEncoder
    from tests.conftest import base_config, write_config

    out = tmp_path_factory.mktemp("gen")
    cfg = load_config(write_config(out / "c.yaml", base_config(demo_assets, out / "run", model="teacher")))
    model, processor = get_model_processor(
        str(demo_assets["teacher"]), model_type="qwen2_5_vl", torch_dtype=torch.float32, device_map="cpu"
    )
    # Sharpen the random-init head so greedy argmaxes are decided by clear margins, not float noise.
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    encoder = RowEncoder.from_config(cfg, processor=processor)
    encoder.template.model = model
    return model, encoder


def _mixed_rows(path: Path) -> list[Row]:
    """Rows of different prompt lengths: text-only, one image and two images."""
    rows = [r for r in read_rows(path) if isinstance(r, Row)]
    by_images: dict[int, list[Row]] = {}
    for r in rows:
        by_images.setdefault(len(r.images), []).append(r)
    picked = by_images.get(0, [])[:1] + by_images[1][:3] + by_images.get(2, [])[:1]
    assert len({len(r.images) for r in picked}) >= 2, "fixture data lacks rows of different lengths"
    return picked


def test_stop_ids_come_from_template_and_tokenizer(teacher_and_encoder: Any) -> None:
    _, encoder = teacher_and_encoder
    ids = stop_token_ids(encoder)
    im_end = encoder.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert ids[0] == im_end  # the template's end-of-turn token first
    assert encoder.tokenizer.eos_token_id in ids


def test_batched_greedy_equals_one_by_one(teacher_and_encoder: Any, demo_assets: dict[str, Path]) -> None:
    model, encoder = teacher_and_encoder
    rows = _mixed_rows(demo_assets["train"])
    settings = SamplingSettings(max_new_tokens=12, batch_size=len(rows))
    batched = generate(model, encoder, rows, settings)
    single = [generate(model, encoder, [r], SamplingSettings(max_new_tokens=12))[0] for r in rows]
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.stopped for c in batched] == [c.stopped for c in single]
    assert any(len(c.token_ids) > 0 for c in batched)
    assert encoder.template.mode == "train"  # the inference mode is restored


def test_sampling_is_seeded(teacher_and_encoder: Any, demo_assets: dict[str, Path]) -> None:
    model, encoder = teacher_and_encoder
    rows = _mixed_rows(demo_assets["train"])
    hot = SamplingSettings(max_new_tokens=8, temperature=50.0, seed=3)
    a = generate(model, encoder, rows, hot)
    b = generate(model, encoder, rows, hot)
    c = generate(model, encoder, rows, SamplingSettings(max_new_tokens=8, temperature=50.0, seed=4))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]


def test_max_new_tokens_without_stop_is_flagged(teacher_and_encoder: Any) -> None:
    _, encoder = teacher_and_encoder
    tok = encoder.tokenizer
    stop = stop_token_ids(encoder)
    word = tok.encode("red", add_special_tokens=False)
    done = split_completion([*word, stop[0], *word], stop, tok)
    assert done.token_ids == word and done.stopped and done.text == "red"
    cut = split_completion(word * 3, stop, tok)
    assert cut.token_ids == word * 3 and not cut.stopped


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="max_new_tokens"):
        SamplingSettings(max_new_tokens=0)
    with pytest.raises(ConfigError, match="temperature"):
        SamplingSettings(max_new_tokens=4, temperature=-1.0)
