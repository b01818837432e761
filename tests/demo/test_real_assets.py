"""The real-size tokenizer and model fields (``pipeline.demo.real_assets``); the models themselves run in
tests/integration/test_real_width.py."""

from __future__ import annotations

import pytest

from pipeline.demo.real_configs import PUBLISHED
from pipeline.demo.tokenizer import NON_SPECIAL_ADDED_TOKENS, SPECIAL_TOKENS
from pipeline.errors import ConfigError


@pytest.fixture(scope="module")
def tokenizer():
    from pipeline.demo.real_assets import build_real_tokenizer

    return build_real_tokenizer()


def test_tokenizer_has_qwen_size_and_added_tokens_at_their_real_ids(tokenizer) -> None:
    assert len(tokenizer) == 151_665
    for offset, token in enumerate(SPECIAL_TOKENS + NON_SPECIAL_ADDED_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) == 151_643 + offset, token
    fields = PUBLISHED["qwen2_5_vl_7b"]
    for key in ("bos_token_id", "eos_token_id", "image_token_id", "video_token_id", "vision_start_token_id"):
        assert fields[key] == PUBLISHED["qwen2_5_vl_3b"][key]
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == fields["image_token_id"]
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == fields["eos_token_id"] == tokenizer.eos_token_id
    assert tokenizer.pad_token_id == fields["bos_token_id"]


def test_text_encodes_to_the_demo_merges_never_to_filler(tokenizer) -> None:
    text = "a small red circle at the top left. the image shows two objects."
    ids = tokenizer(text)["input_ids"]
    assert max(ids) < 460 and len(ids) < len(text) / 2  # merged words, not bytes or filler ids
    assert tokenizer.decode(ids) == text
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")


def test_model_fields_keep_widths_and_cut_depth() -> None:
    from pipeline.demo.real_assets import model_fields

    full = model_fields("qwen2_5_vl_7b", "full")
    assert full == PUBLISHED["qwen2_5_vl_7b"]
    small = model_fields("qwen2_5_vl_3b", "reduced")
    assert (small["num_hidden_layers"], small["vision_config"]["depth"]) == (2, 2)
    assert small["vision_config"]["fullatt_block_indexes"] == [1]
    assert (small["vocab_size"], small["hidden_size"], small["tie_word_embeddings"]) == (151_936, 2048, True)
    with pytest.raises(ConfigError, match="depth must be one of reduced, full"):
        model_fields("qwen2_5_vl_3b", "half")


def test_real_assets_refuse_an_image_size_off_the_patch_grid(tmp_path) -> None:
    from pipeline.demo.real_assets import build_real_assets

    with pytest.raises(ConfigError, match="multiple of 28"):
        build_real_assets(tmp_path, image_px=450)
    assert not any(tmp_path.iterdir())  # refused before anything is built
