"""Tiny randomly initialised Qwen2.5-VL models: a teacher and a student sharing the demo tokenizer.

They are real ``Qwen2_5_VLForConditionalGeneration`` instances (vision tower with window attention,
patch merger, M-RoPE text model), only small, so every code path the pipeline takes on a real
checkpoint (template encoding, image features, generation, padded vocab rows) runs on CPU in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tokenizer import special_token_config


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of one demo model. Text head_dim = hidden_size / num_heads; vision likewise."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vision_hidden_size: int
    vision_depth: int
    vision_heads: int
    vision_intermediate_size: int
    # Embedding / lm_head rows are rounded up to a multiple of this (1 = exactly len(tokenizer)),
    # mimicking real Qwen checkpoints whose logit width exceeds the tokenizer (152064 vs 151665).
    vocab_multiple: int = 1
    # Qwen2.5-VL-3B ties lm_head to the embeddings, 7B does not; the demo mirrors that split.
    tie_word_embeddings: bool = False


TEACHER_SPEC = ModelSpec(
    hidden_size=128,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=512,
    vision_hidden_size=96,
    vision_depth=2,
    vision_heads=3,
    vision_intermediate_size=256,
    vocab_multiple=64,
)
STUDENT_SPEC = ModelSpec(
    hidden_size=64,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
    intermediate_size=192,
    vision_hidden_size=32,
    vision_depth=1,
    vision_heads=1,
    vision_intermediate_size=96,
    tie_word_embeddings=True,
)


def mrope_section(head_dim: int) -> list[int]:
    """Split ``head_dim / 2`` rotary frequencies over (temporal, height, width) like Qwen's [16, 24, 24].

    The three parts must sum to ``head_dim // 2``; the model slices the rotary table with them.
    """
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def padded_vocab_size(n_tokens: int, multiple: int) -> int:
    """``n_tokens`` rounded up to a multiple of ``multiple``."""
    return -(-n_tokens // multiple) * multiple


def build_config(spec: ModelSpec, tokenizer: Any) -> Any:
    """A ``Qwen2_5_VLConfig`` whose special-token ids come from ``tokenizer`` by name."""
    from transformers import Qwen2_5_VLConfig

    ids = special_token_config(tokenizer)
    head_dim = spec.hidden_size // spec.num_heads
    text_config = {
        "vocab_size": padded_vocab_size(len(tokenizer), spec.vocab_multiple),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "max_position_embeddings": 4096,
        "max_window_layers": spec.num_layers,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 1000000.0,
            "mrope_section": mrope_section(head_dim),
        },
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
        "dtype": "float32",
    }
    vision_config = {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_heads": spec.vision_heads,
        "out_hidden_size": spec.hidden_size,  # the merger projects straight into the text width
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        # 56-pixel windows = 2x2 merged tokens: a whole demo image, several windows for larger
        # inputs (the real model uses 112 on images ten times wider). Last block is global.
        "window_size": 56,
        "fullatt_block_indexes": [spec.vision_depth - 1],
        "tokens_per_second": 2,
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=spec.tie_word_embeddings,
    )


def build_model(spec: ModelSpec, tokenizer: Any, seed: int) -> Any:
    """A randomly initialised ``Qwen2_5_VLForConditionalGeneration`` in float32, eval mode.

    Initialisation runs under a forked RNG seeded with ``seed``: identical seeds give identical
    weights, and the caller's global RNG state is left alone.
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    config = build_config(spec, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    ids = special_token_config(tokenizer)
    # Greedy by default (the real checkpoint samples at temperature 0.1 with top_k 1, i.e. greedy in
    # effect); generation stops at <|im_end|> or <|endoftext|> like Qwen2.5-VL-Instruct.
    model.generation_config = GenerationConfig(
        bos_token_id=ids["bos_token_id"],
        eos_token_id=[ids["eos_token_id"], ids["pad_token_id"]],
        pad_token_id=ids["pad_token_id"],
        do_sample=False,
    )
    return model.eval()


def count_parameters(model: Any) -> int:
    """Distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def save_model_dir(model: Any, processor: Any, path: Path) -> Path:
    """``save_pretrained`` the model (safetensors) and its processor (tokenizer, chat template) to ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    processor.save_pretrained(path)
    return path
