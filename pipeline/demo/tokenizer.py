"""A tiny Qwen2-style tokenizer and the Qwen2.5-VL processor around it, built offline.

The tokenizer is a byte-level BPE trained on the demo vocabulary with Qwen2's pre-tokenizer, plus
Qwen2.5-VL's added tokens by name and in Qwen's order, appended after the BPE vocabulary exactly as
in the real model (there ``<|endoftext|>`` is 151643 and ``<|image_pad|>`` 151655; here the same
tokens get small ids). Code that hard-codes Qwen's ids therefore breaks loudly on the demo models
instead of silently working only for real checkpoints.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE

from .captions import CaptionStyle
from .dataset import SYSTEM_PROMPT, corpus_texts
from .scene import IMAGE_SIZE

# Same split regex as transformers' Qwen2Tokenizer, so a reloaded tokenizer pre-tokenizes identically.
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
BPE_VOCAB_SIZE = 400  # 256 byte symbols + merges; enough for every demo word to be one token
# The varied captions' extra words (synonyms, templates, count sentences) need more merges to stay one
# token each: a word split in pieces would lengthen every caption and blur the per-word entropy.
BPE_VOCAB_SIZES: dict[str, int] = {"exact": BPE_VOCAB_SIZE, "varied": 460}
# Qwen2.5-VL's added tokens, in id order. The first 14 are special (skipped when decoding).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
NON_SPECIAL_ADDED_TOKENS: tuple[str, ...] = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
# Qwen2.5-VL-Instruct's chat template, verbatim (system prompt injected when absent).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MIN_PIXELS = IMAGE_SIZE * IMAGE_SIZE  # a 56x56 demo image stays 56x56: 4 LLM tokens
MAX_PIXELS = 4 * MIN_PIXELS  # larger inputs are shrunk to at most 16 tokens


def train_backend_tokenizer(vocab_size: int = BPE_VOCAB_SIZE, captions: CaptionStyle = "exact") -> Tokenizer:
    """Train the byte-level BPE on the demo corpus of ``captions`` and append Qwen's added tokens.

    The trainer is deterministic (merge ties are broken by the pair itself), so the same corpus
    gives the same ``tokenizer.json``.
    """
    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        # Every byte in the base vocabulary: any text stays encodable, nothing maps to an unknown.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],  # added afterwards so they get ids after the BPE vocab, as in Qwen
    )
    chat_framing = ["system\n" + SYSTEM_PROMPT, "user\n", "assistant\n"]
    tok.train_from_iterator(chat_framing + corpus_texts(captions), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in NON_SPECIAL_ADDED_TOKENS])
    return tok


def build_tokenizer(vocab_size: int | None = None, captions: CaptionStyle = "exact") -> Any:
    """A ``Qwen2Tokenizer`` over the trained BPE (transformers 5 folded ``Qwen2TokenizerFast`` into it:
    the old name is an alias of the same tokenizers-backed class).

    Special-token roles follow Qwen2.5-VL-Instruct: eos ``<|im_end|>``, pad ``<|endoftext|>``,
    no bos, no unk. ``vocab_size`` None: the BPE size of the ``captions`` style.
    """
    from transformers import Qwen2Tokenizer

    # Built as a kwargs dict: transformers' signature types unk_token as str, but Qwen2.5-VL ships
    # without one (byte-level BPE never needs it), and the saved tokenizer_config should say so.
    roles: dict[str, Any] = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}
    roles["unk_token"] = None
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=train_backend_tokenizer(vocab_size or BPE_VOCAB_SIZES[captions], captions),
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        errors="replace",
        **roles,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer: Any) -> Any:
    """``Qwen2_5_VLProcessor`` with image and video processors sized for the demo images.

    The torchvision-backed ``Qwen2VLImageProcessor`` (transformers 5's default) is used; it is
    deterministic on CPU and is what ``AutoProcessor`` reloads.
    """
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    video_processor = Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def special_token_config(tokenizer: Any) -> dict[str, int]:
    """The token ids a Qwen2.5-VL config must carry, looked up by name in ``tokenizer``."""
    ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
        # Qwen2.5-VL's config.json: bos is <|endoftext|>, eos <|im_end|>; generation also stops on
        # <|endoftext|> (see generation_config) and pads with it.
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    }
    unknown = [name for name, value in ids.items() if not isinstance(value, int) or value < 0]
    if unknown:
        raise ValueError(f"tokenizer lacks Qwen2.5-VL special tokens for {unknown}")
    return ids
