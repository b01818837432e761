"""Qwen2.5-VL-7B- and 3B-shaped teacher/student with random bf16 weights, built offline.

The models come from the published ``config.json`` fields in :mod:`pipeline.demo.real_configs`
(``depth="reduced"`` keeps every width and the vocabulary and cuts the depth to 2 LLM layers and 2
vision blocks, the second a full-attention block: what the test suite runs). Nothing downloads, and no
installed package ships the Qwen2.5 tokenizer's vocabulary and merges, so the tokenizer is the demo's
byte-level BPE (:mod:`pipeline.demo.tokenizer`) extended to the real size: its merges, then unreachable
filler entries up to Qwen2.5's 151,643 BPE ids, then Qwen's 22 added tokens at their real ids
(``<|endoftext|>`` 151643, ``<|im_end|>`` 151645, ``<|image_pad|>`` 151655; 151,665 in all, under the
7B's 152,064-wide head and the 3B's 151,936-wide one, as with the real checkpoints). The processor
carries Qwen2.5-VL's published ``preprocessor_config.json`` pixel bounds, so images keep their real
resolution. Layout under ``out_dir``::

    teacher/  student/   model.safetensors (bf16), config, processor, tokenizer
    data/{train,val}.jsonl, data/images/*.png   captioned rows at real image size
    real_assets.json     what was built (depth, parameter counts, head widths, tie flags)
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .assets import prepare_out_dir
from .captions import caption_for
from .dataset import CAPTION_PROMPT, _row
from .real_configs import PUBLISHED, qwen_config, reduced
from .scene import render, sample_objects
from .tokenizer import CHAT_TEMPLATE, NON_SPECIAL_ADDED_TOKENS, SPECIAL_TOKENS, train_backend_tokenizer

QWEN_BPE_SIZE = 151_643  # ids below <|endoftext|> in Qwen2.5's tokenizer.json
QWEN_TOKENIZER_SIZE = QWEN_BPE_SIZE + len(SPECIAL_TOKENS) + len(NON_SPECIAL_ADDED_TOKENS)  # 151,665
# Qwen2.5-VL-*-Instruct preprocessor_config.json: 4 to 16,384 merged visual tokens per image.
MIN_PIXELS = 3136
MAX_PIXELS = 12_845_056
DEPTHS = ("reduced", "full")
REDUCED_LAYERS, REDUCED_VISION_BLOCKS = 2, 2
_OWNED = ("teacher", "student", "data", "real_assets.json")


def model_fields(name: str, depth: str) -> dict[str, Any]:
    """The config.json fields of ``name`` (``qwen2_5_vl_7b`` / ``qwen2_5_vl_3b``) at ``depth``."""
    if depth not in DEPTHS:
        raise ConfigError(f"depth must be one of {', '.join(DEPTHS)}, got {depth!r}")
    published = PUBLISHED[name]
    if depth == "full":
        return reduced(published, published["num_hidden_layers"], published["vision_config"]["depth"])
    return reduced(published, REDUCED_LAYERS, REDUCED_VISION_BLOCKS)


def build_real_tokenizer() -> Any:
    """A ``Qwen2Tokenizer`` of Qwen2.5's size with its added tokens at their real ids (module doc).

    Roles as in Qwen2.5-VL-Instruct (and ``pipeline.demo.tokenizer.build_tokenizer``): eos
    ``<|im_end|>``, pad ``<|endoftext|>``, no bos, no unk.
    """
    from tokenizers import AddedToken, Tokenizer
    from transformers import Qwen2Tokenizer

    spec = json.loads(train_backend_tokenizer().to_str())
    spec["added_tokens"] = []  # re-added below, after the filler, so they land on Qwen's ids
    vocab: dict[str, int] = {t: i for t, i in spec["model"]["vocab"].items() if i < QWEN_BPE_SIZE}
    # Printable ASCII maps to itself under the byte-level alphabet, so a filler id decodes to its name;
    # no merge produces one, so no text ever encodes to it.
    while len(vocab) < QWEN_BPE_SIZE:
        vocab[f"<|filler_{len(vocab)}|>"] = len(vocab)
    spec["model"]["vocab"] = vocab
    backend = Tokenizer.from_str(json.dumps(spec))
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in NON_SPECIAL_ADDED_TOKENS])
    roles: dict[str, Any] = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None}
    roles["unk_token"] = None
    tokenizer = Qwen2Tokenizer(
        tokenizer_object=backend,
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=131072,  # Qwen2.5-VL-Instruct's tokenizer_config
        errors="replace",
        **roles,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_real_processor(tokenizer: Any) -> Any:
    """``Qwen2_5_VLProcessor`` with the published pixel bounds (:data:`MIN_PIXELS`, :data:`MAX_PIXELS`)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
        chat_template=CHAT_TEMPLATE,
    )


def build_real_model(fields: dict[str, Any], seed: int) -> Any:
    """A randomly initialised ``Qwen2_5_VLForConditionalGeneration`` of ``fields``, built in bf16.

    Built directly in bf16 (never an fp32 copy first: the full 7B would need 33 GB for it). Greedy
    generation, stopping at ``<|im_end|>`` or ``<|endoftext|>`` (the published generation_config
    samples at temperature 0.1 with top_k 1: greedy in effect).
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    config = qwen_config(fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    eos, pad = fields["eos_token_id"], fields["bos_token_id"]
    model.generation_config = GenerationConfig(
        bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad, do_sample=False
    )
    return model.eval()


def caption_of_length(objects: list[Any], tokenizer: Any, n_tokens: int, rng: random.Random) -> str:
    """The scene's caption, continued with re-phrased sentences about it until ``n_tokens`` tokens."""
    sentences = [caption_for(objects, 1, "exact", rng)]
    while len(tokenizer(" ".join(sentences))["input_ids"]) < n_tokens:
        sentences.append(caption_for(objects, 1, "varied", rng))
    return " ".join(sentences)


def build_real_rows(
    split: str, n_rows: int, data_dir: Path, tokenizer: Any, image_px: int, caption_tokens: int, seed: int
) -> Path:
    """``data_dir/{split}.jsonl``: one-image caption rows, each image a demo scene drawn at
    ``image_px`` x ``image_px`` (nearest-neighbour upscale) with a caption of about
    ``caption_tokens`` tokens."""
    from PIL import Image

    rng = random.Random(f"real-{seed}-{split}")
    image_dir = data_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"{split}.jsonl"
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for index in range(n_rows):
            sample_id = f"{split}-{index:05d}"
            scene = sample_objects(rng)
            image = render(scene).resize((image_px, image_px), Image.Resampling.NEAREST)
            image.save(image_dir / f"{sample_id}.png", format="PNG", optimize=False)
            caption = caption_of_length(scene, tokenizer, caption_tokens, rng)
            row = _row(sample_id, "caption", CAPTION_PROMPT, caption, [f"images/{sample_id}.png"], scene)
            f.write(json.dumps(row) + "\n")
    return path


def build_real_assets(
    out_dir: Path,
    depth: str = "reduced",
    *,
    seed: int = 0,
    n_train: int = 2,
    n_val: int = 1,
    image_px: int = 448,
    caption_tokens: int = 200,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write the real-shape teacher/student and a few real-size rows to ``out_dir``; return the paths
    (``root``, ``teacher``, ``student``, ``data``, ``train``, ``val``, ``summary``).

    ``ConfigError`` for an unknown ``depth``, an image not a multiple of 28 px, or existing assets
    without ``overwrite``. The teacher is built, saved and freed before the student is built: at full
    depth one model's bf16 weights (16.6 GB for the 7B) is all this holds at a time.
    """
    import gc

    from .models import count_parameters, save_model_dir

    if image_px % 28 or image_px < 56:
        raise ConfigError(f"image_px must be a multiple of 28 (14 px patches, 2x2 merge), got {image_px}")
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, overwrite, _OWNED, "real-size assets")
    tokenizer = build_real_tokenizer()
    processor = build_real_processor(tokenizer)
    summary: dict[str, Any] = {"depth": depth, "seed": seed, "tokenizer_size": len(tokenizer)}
    paths: dict[str, Path] = {"root": out_dir}
    for offset, (side, name) in enumerate((("teacher", "qwen2_5_vl_7b"), ("student", "qwen2_5_vl_3b"))):
        fields = model_fields(name, depth)
        model = build_real_model(fields, seed=2 * seed + offset)
        paths[side] = save_model_dir(model, processor, out_dir / side)
        summary[side] = {
            "published": name,
            "parameters": count_parameters(model),
            "head_width": fields["vocab_size"],
            "tie_word_embeddings": fields["tie_word_embeddings"],
            "layers": fields["num_hidden_layers"],
            "vision_blocks": fields["vision_config"]["depth"],
        }
        del model
        gc.collect()
    data_dir = out_dir / "data"
    for split, n in (("train", n_train), ("val", n_val)):
        paths[split] = build_real_rows(split, n, data_dir, tokenizer, image_px, caption_tokens, seed)
    summary.update(image_px=image_px, caption_tokens=caption_tokens, rows={"train": n_train, "val": n_val})
    paths["data"] = data_dir
    paths["summary"] = out_dir / "real_assets.json"
    paths["summary"].write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return paths
