"""The one generation loop: batched completions of rows' prompts, greedy or sampled.

Used by on-policy training (the student writes its completion), evaluation (greedy captions) and the
cache stage (the teacher writes responses for prompt-only rows). Prompts are encoded by the shared
``RowEncoder.encode_prompt`` (images expand exactly as in training) and collated in the template's
inference mode, which pads on the left, so every row's new tokens start at the same column and
``model.generate`` keeps one KV cache for the batch.

Stop ids come from the template and tokenizer (the template's end-of-turn suffix, e.g. Qwen's
``<|im_end|>``, its stop words, and the tokenizer's eos), never from strings written here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.data import Row
    from pipeline.encoding import RowEncoder

# Keys of a collated batch that ``model.generate`` takes (labels and loss bookkeeping are left out).
_GENERATE_KEYS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")


@dataclass(frozen=True)
class SamplingSettings:
    """How to generate. ``temperature`` 0 means greedy (``seed`` then has no effect).

    ``max_new_tokens``: generated tokens per row, the stop token included. ``seed``: seeds the torch
    RNG for the sampled case (forked, so the caller's RNG state is left alone); None uses the global
    RNG as it is (on-policy training, where the trainer seeds once). ``batch_size``: rows per
    ``generate`` call (on CPU one decoding step costs about the same for 1 or 32 rows).
    """

    max_new_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ConfigError(f"sampling temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.batch_size < 1:
            raise ConfigError(f"generation batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class Completion:
    """One row's generated response.

    ``token_ids``: the new tokens before the first stop token (the stop token itself is left out);
    ``text``: their decoding without special tokens, stripped; ``stopped``: a stop token ended the
    response (False: it ran into ``max_new_tokens``).
    """

    token_ids: list[int]
    text: str
    stopped: bool


def with_response(row: Row, text: str) -> Row:
    """``row`` with its final assistant turn replaced by (or, for a prompt-only row, set to) ``text``."""
    msgs = [dict(m) for m in row.messages]
    if msgs and msgs[-1].get("role") == "assistant":
        msgs = msgs[:-1]
    msgs.append({"role": "assistant", "content": text})
    return replace(row, messages=msgs)


def stop_token_ids(encoder: RowEncoder) -> list[int]:
    """Ids that end a response: the template's end-of-turn token, its single-token stop words, eos.

    ms-swift's template meta resolves its suffix (Qwen: ``<|im_end|>``) to ``stop_token_id``; stop
    words that are one token in this tokenizer are added, multi-token ones cannot stop ``generate``.
    """
    meta = encoder.template.template_meta
    ids = resolve_stop_ids(encoder.tokenizer, meta.stop_words, getattr(meta, "stop_token_id", None))
    if not ids:
        raise ConfigError(
            f"template {type(encoder.template).__name__}: no stop token id found in the tokenizer"
        )
    return ids


def resolve_stop_ids(
    tokenizer: Any, stop_words: Sequence[Any] | None, stop_token_id: Any = None
) -> list[int]:
    """``stop_token_id`` (the template's end-of-turn), then each stop word that is one token in
    ``tokenizer`` (a string looked up in its vocabulary, or a one-id list), then its eos; no repeats.

    Also used without a template, on the stop words a cache's fingerprint records.
    """
    vocab = tokenizer.get_vocab()
    ids: list[int] = []
    candidates: list[Any] = [stop_token_id, tokenizer.eos_token_id]
    for word in stop_words or []:
        if isinstance(word, str):
            candidates.append(vocab.get(word.strip()))
        elif isinstance(word, list) and len(word) == 1:
            candidates.append(word[0])
    for i in candidates:
        if isinstance(i, int) and i >= 0 and i not in ids:
            ids.append(i)
    return ids


@contextlib.contextmanager
def _inference_mode(template: Any) -> Iterator[None]:
    """The template's inference mode for the duration (its collator pads on the left there)."""
    saved = template.mode
    template.set_mode("transformers")
    try:
        yield
    finally:
        template.set_mode(saved)


def _rng(seed: int | None) -> contextlib.AbstractContextManager:
    if seed is None:
        return contextlib.nullcontext()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    return torch.random.fork_rng(devices=devices)


def split_completion(new_ids: Sequence[int], stop_ids: Sequence[int], tokenizer: Any) -> Completion:
    """Cut generated ids [T] at the first stop id; decode what precedes it."""
    stops = set(stop_ids)
    cut = next((i for i, t in enumerate(new_ids) if t in stops), None)
    kept = list(new_ids[:cut]) if cut is not None else list(new_ids)
    text = str(tokenizer.decode(kept, skip_special_tokens=True)).strip()
    return Completion(kept, text, cut is not None)


@torch.no_grad()
def generate(
    model: Any,
    encoder: RowEncoder,
    rows: Sequence[Row] | Sequence[dict[str, Any]],
    settings: SamplingSettings,
) -> list[Completion]:
    """Complete every row's prompt with ``model``, in order, ``settings.batch_size`` rows per call.

    ``rows`` are ``Row`` objects (prompt-encoded here) or already prompt-encoded dicts from
    ``RowEncoder.encode_prompt``. Per batch: collated ``input_ids [B, P]`` (left-padded) ->
    ``generate`` -> ``[B, P + T]``; the new columns ``[B, T]`` are cut at each row's first stop id
    (a finished row is fed padding until the whole batch stops). The model is put in eval mode for
    the call and restored after.
    """
    template, tok = encoder.template, encoder.tokenizer
    stop_ids = stop_token_ids(encoder)
    device = next(model.parameters()).device
    greedy = settings.temperature == 0
    out: list[Completion] = []
    was_training = model.training
    model.eval()
    try:
        with _rng(settings.seed), _inference_mode(template):
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            for start in range(0, len(rows), settings.batch_size):
                chunk = rows[start : start + settings.batch_size]
                encs = [r if isinstance(r, dict) else encoder.encode_prompt(r) for r in chunk]
                batch = template.data_collator(encs)
                inputs = {k: v.to(device) for k, v in batch.items() if k in _GENERATE_KEYS}
                seqs = model.generate(
                    **inputs,
                    max_new_tokens=settings.max_new_tokens,
                    do_sample=not greedy,
                    temperature=None if greedy else settings.temperature,
                    top_k=None,
                    top_p=None,
                    eos_token_id=stop_ids,
                    pad_token_id=tok.pad_token_id,
                )
                for new in seqs[:, inputs["input_ids"].shape[1] :].tolist():
                    out.append(split_completion(new, stop_ids, tok))
    finally:
        model.train(was_training)
    return out
