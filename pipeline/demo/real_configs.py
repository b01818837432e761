"""The published ``config.json`` of Qwen2.5-VL-7B-Instruct and Qwen2.5-VL-3B-Instruct, field for field.

Source: the models' ``config.json`` on the Hugging Face Hub (``Qwen/Qwen2.5-VL-7B-Instruct``,
``Qwen/Qwen2.5-VL-3B-Instruct``), copied here so the real-size models build without a download. The
flat layout (text fields at the top, ``vision_config`` nested, ``rope_scaling`` with ``mrope``) is the
published one; ``Qwen2_5_VLConfig`` reads it as it reads the Hub file. Two of its vision defaults
differ from the published values (``hidden_size`` 3584 vs 1280, ``tokens_per_second`` 4 vs 2), which
is why every vision field is spelled out.

``reduced`` keeps every width and the vocabulary and cuts the depth: what the test suite runs.
"""

from __future__ import annotations

import copy
from typing import Any

# Both models share these: the same tower (only its output projection differs), tokenizer ids,
# rotary settings and context length.
_SHARED_TEXT: dict[str, Any] = {
    "architectures": ["Qwen2_5_VLForConditionalGeneration"],
    "model_type": "qwen2_5_vl",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "vision_start_token_id": 151652,
    "vision_end_token_id": 151653,
    "vision_token_id": 151654,
    "image_token_id": 151655,
    "video_token_id": 151656,
    "hidden_act": "silu",
    "initializer_range": 0.02,
    "max_position_embeddings": 128000,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "sliding_window": 32768,
    "use_sliding_window": False,
    "use_cache": True,
    "torch_dtype": "bfloat16",
}
_VISION: dict[str, Any] = {
    "depth": 32,
    "hidden_act": "silu",
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_chans": 3,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "spatial_patch_size": 14,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}

QWEN2_5_VL_7B_INSTRUCT: dict[str, Any] = {
    **_SHARED_TEXT,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_window_layers": 28,
    "tie_word_embeddings": False,
    "vocab_size": 152064,
    "vision_config": {**_VISION, "out_hidden_size": 3584},
}
QWEN2_5_VL_3B_INSTRUCT: dict[str, Any] = {
    **_SHARED_TEXT,
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "max_window_layers": 70,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
    "vision_config": {**_VISION, "out_hidden_size": 2048},
}
PUBLISHED: dict[str, dict[str, Any]] = {
    "qwen2_5_vl_7b": QWEN2_5_VL_7B_INSTRUCT,
    "qwen2_5_vl_3b": QWEN2_5_VL_3B_INSTRUCT,
}


def reduced(published: dict[str, Any], layers: int, vision_blocks: int) -> dict[str, Any]:
    """``published`` with ``layers`` LLM layers and ``vision_blocks`` vision blocks, the last of them a
    full-attention block (the others windowed, as in the real tower); every width unchanged.

    ``layers`` / ``vision_blocks`` at the published depth return an equal copy.
    """
    if not 1 <= layers <= published["num_hidden_layers"]:
        raise ValueError(f"layers must be 1..{published['num_hidden_layers']}, got {layers}")
    vision = published["vision_config"]
    if not 1 <= vision_blocks <= vision["depth"]:
        raise ValueError(f"vision_blocks must be 1..{vision['depth']}, got {vision_blocks}")
    out = copy.deepcopy(published)
    if layers == published["num_hidden_layers"] and vision_blocks == vision["depth"]:
        return out
    out["num_hidden_layers"] = layers
    out["max_window_layers"] = min(published["max_window_layers"], layers)
    full = [i for i in vision["fullatt_block_indexes"] if i < vision_blocks - 1] + [vision_blocks - 1]
    out["vision_config"].update(depth=vision_blocks, fullatt_block_indexes=full)
    return out


def qwen_config(fields: dict[str, Any]) -> Any:
    """A ``Qwen2_5_VLConfig`` read from a published (flat) ``config.json`` mapping."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(**copy.deepcopy(fields))
