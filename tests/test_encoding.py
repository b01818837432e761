"""The shared encoder: image placeholders expand to every feature token, and the model sees all of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tests.conftest import base_config, write_config


def _encoder(demo_assets: dict[str, Path], tmp_path: Path) -> object:
    from pipeline.config import load_config
    from pipeline.encoding import RowEncoder

    cfg = load_config(write_config(tmp_path / "c.yaml", base_config(demo_assets, tmp_path / "run")))
    return RowEncoder.from_config(cfg)


def test_placeholders_expand_to_every_feature_token(demo_assets: dict[str, Path], tmp_path: Path) -> None:
    from pipeline.data import Row, read_rows

    enc = _encoder(demo_assets, tmp_path)
    image_id = enc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    # ms-swift's class default is Qwen's own id; the instance carries this tokenizer's id
    assert type(enc.template).image_token_id == 151655 != image_id == enc.template.image_token_id
    rows = [r for r in read_rows(demo_assets["train"]) if isinstance(r, Row) and len(r.images) == 1]
    two = Row(
        "two-images",
        [
            {"role": "user", "content": "<image><image>Describe both images."},
            {"role": "assistant", "content": rows[0].response() + " " + rows[1].response()},
        ],
        [rows[0].images[0], rows[1].images[0]],
        source="test",
    )
    for row, n_images in ((rows[0], 1), (two, 2)):
        e = enc.encode(row)
        grid = e.inputs["image_grid_thw"]
        expected = int(grid.prod(dim=1).sum()) // 4  # merge_size 2 x 2 patches per LLM token
        assert expected == 4 * n_images
        assert e.input_ids.count(image_id) == expected


def test_model_sees_the_whole_image(demo_assets: dict[str, Path], tmp_path: Path) -> None:
    from swift.model import get_model_processor

    from pipeline.data import Row, read_rows
    from pipeline.forward import hidden_states

    enc = _encoder(demo_assets, tmp_path)
    model, _ = get_model_processor(
        str(demo_assets["student"]), model_type="qwen2_5_vl", torch_dtype=torch.float32
    )
    enc.template.model = model
    row = next(r for r in read_rows(demo_assets["train"]) if isinstance(r, Row) and len(r.images) == 1)
    batch = enc.template.data_collator([enc.encode(row).inputs])
    image_positions = (batch["input_ids"][0] == enc.template.image_token_id).nonzero().flatten()
    changed = dict(batch)
    changed["pixel_values"] = batch["pixel_values"].clone()
    changed["pixel_values"][-4:] += 1.0  # only the last merged token's four patches
    h0, h1 = hidden_states(model, batch)[0], hidden_states(model, changed)[0]
    delta = (h0 - h1).abs().amax(dim=-1)
    # the last image token carries the changed patches; the text before the image is untouched
    assert float(delta[image_positions[-1]]) > 1e-4
    assert float(delta[: int(image_positions[0])].max()) == 0.0


def _enc(ids: list[int], labels: list[int]) -> Any:
    from pipeline.encoding import EncodedRow, encoding_hash

    return EncodedRow("s", {"input_ids": ids, "labels": labels}, encoding_hash(ids, labels))


def test_one_diff_for_cache_rows_and_encodings() -> None:
    """``encoding_differences(now, other)`` names the same first difference whether ``other`` is the
    cache row built from an encoding or that encoding itself, and a prompt-token change (no target
    moves) is named by its input_ids position."""
    import numpy as np

    from pipeline.cache.format import CachedSample
    from pipeline.encoding import encoding_differences, first_encoding_difference

    base = _enc([1, 2, 3, 4], [-100, -100, 3, 4])
    longer = _enc([1, 2, 3, 4, 5], [-100, -100, 3, 4, 5])
    pos = base.target_positions()
    cached = CachedSample(
        "s", base.encoding_hash, 4, pos, np.array([3, 4]), np.zeros((2, 1), np.int64),
        np.zeros((2, 1), np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32),
    )  # fmt: skip
    assert first_encoding_difference(base, cached) is None and encoding_differences(base, base) == []
    for other in (cached, base):
        first = encoding_differences(longer, other)[0]
        assert first.startswith("input_ids length (5 now, 4 ")
    prompt = _enc([9, 2, 3, 4], [-100, -100, 3, 4])
    assert (
        first_encoding_difference(prompt, base, ("student", "teacher"))
        == "input_ids[0] (9 student, 1 teacher)"
    )
    assert encoding_differences(prompt, cached)[0].startswith("encoding hash differs")
