"""The shared encoder: image placeholders expand to every feature token, and the model sees all of them."""

from __future__ import annotations

from pathlib import Path

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
    from pipeline.teacher.forward import hidden_states

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
