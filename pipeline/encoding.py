"""The ONE function that turns a dataset row into model inputs, shared by caching and training.

Both stages build a ``RowEncoder`` from the same config with ``RowEncoder.from_config``: the
student's ms-swift template with the configured max_length, truncation and image pixel limits.
Its ``settings()`` go into the cache fingerprint, and every encoded sample carries an
``encoding_hash`` (input ids, label mask, image grid) that the trainer compares with the cache.

Encoding is strict: a row that fails to encode raises ``DataError`` with a reason code; nothing is
silently replaced by another row (ms-swift's lazy dataset resamples on failure by default).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data import ENCODE_FAILED, TRUNCATED, Row, check_row
from pipeline.errors import CompatibilityError, DataError
from pipeline.hashing import file_sha256
from pipeline.versions import encoding_library_versions

if TYPE_CHECKING:
    from pipeline.cache.format import CachedSample
    from pipeline.config import DistillConfig

IGNORE_INDEX = -100

# ms-swift's Qwen-VL templates hard-code Qwen's ids for these placeholders (image_token_id = 151655).
# A tokenizer with other ids (any non-Qwen vocabulary, e.g. the tiny demo one) would silently skip
# the expansion of image placeholders, so the ids are read from the tokenizer and set on the
# template instance (never on ms-swift's class).
_PLACEHOLDER_ATTRS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>"}

# Environment variables through which ms-swift / qwen_vl_utils read image and video pixel limits.
_PIXEL_ENV = (
    "MAX_PIXELS",
    "MIN_PIXELS",
    "IMAGE_MAX_TOKEN_NUM",
    "IMAGE_MIN_TOKEN_NUM",
    "VIDEO_MAX_PIXELS",
    "VIDEO_MIN_PIXELS",
    "VIDEO_TOTAL_PIXELS",
    "SPATIAL_MERGE_SIZE",
    "FPS",
    "FPS_MAX_FRAMES",
)


@dataclass
class EncodedRow:
    """A row encoded by the template.

    ``inputs`` is the template's output dict (``input_ids``/``labels`` lists of length L,
    ``pixel_values`` float [P, C*T*p*p], ``image_grid_thw`` int64 [n_images, 3], ...), ready for
    ``template.data_collator``.
    """

    sample_id: str
    inputs: dict[str, Any]
    encoding_hash: str

    @property
    def input_ids(self) -> list[int]:
        return list(self.inputs["input_ids"])

    @property
    def labels(self) -> list[int]:
        return list(self.inputs["labels"])

    def target_positions(self) -> np.ndarray:
        """Positions j >= 1 with labels[j] != -100 (int64 [n]); each is predicted by logits at j-1."""
        labels = np.asarray(self.inputs["labels"], dtype=np.int64)
        pos = np.nonzero(labels != IGNORE_INDEX)[0]
        return pos[pos >= 1]


def encoding_hash(
    input_ids: Any, labels: Any, image_grid_thw: Any = None, image_hashes: tuple[str, ...] = ()
) -> str:
    """sha256 over the input ids, the supervised-label mask, the image grid and the image bytes (hex).

    The image bytes enter through their sha256 (``image_hashes``): a changed image with an unchanged
    size would otherwise keep a stale teacher distribution.
    """
    h = hashlib.sha256()
    ids = np.asarray(input_ids, dtype=np.int64)
    h.update(b"ids")
    h.update(ids.tobytes())
    h.update(b"mask")
    h.update((np.asarray(labels, dtype=np.int64) != IGNORE_INDEX).tobytes())
    if image_grid_thw is not None:
        grid = np.asarray(image_grid_thw.tolist() if hasattr(image_grid_thw, "tolist") else image_grid_thw)
        h.update(b"grid")
        h.update(grid.astype(np.int64).tobytes())
    for img in image_hashes:
        h.update(b"img")
        h.update(img.encode())
    return h.hexdigest()


def encoding_differences(
    enc: EncodedRow, other: EncodedRow | CachedSample, names: tuple[str, str] = ("now", "in cache")
) -> list[str]:
    """Every way ``enc`` (the row encoded now) differs from ``other``, most telling first; ``[]`` if equal.

    ``other`` is the row's cache row (``CachedSample``) or another encoding of it (``EncodedRow``, e.g.
    the teacher's template); ``names`` label the two sides in the messages. Order: sequence length,
    the first supervised position, supervised positions, target ids, input ids (two encodings only),
    then the encoding hash (which also covers the image grid and image bytes).
    """
    now, then = names
    diffs: list[str] = []
    ids = np.asarray(enc.inputs["input_ids"], dtype=np.int64)
    if isinstance(other, EncodedRow):
        other_ids: np.ndarray | None = np.asarray(other.inputs["input_ids"], dtype=np.int64)
        got = other.target_positions()
        got_targets = np.asarray(other.inputs["labels"], dtype=np.int64)[got]
        num_tokens = len(other.inputs["input_ids"])
    else:
        other_ids, num_tokens = None, other.num_tokens
        got = np.asarray(other.positions, dtype=np.int64)
        got_targets = np.asarray(other.target_ids, dtype=np.int64)
    if num_tokens != len(ids):
        diffs.append(f"input_ids length ({len(ids)} {now}, {num_tokens} {then})")
    want = enc.target_positions()
    if want.size and (got.size == 0 or got[0] != want[0]):
        diffs.append(
            f"first supervised position (the first response token) is {want[0]} {now}, "
            f"{int(got[0]) if got.size else 'none'} {then}"
        )
    if got.shape != want.shape or (got != want).any():
        n = min(len(got), len(want))
        neq = got[:n] != want[:n]
        i = int(np.argmax(neq)) if neq.any() else n
        diffs.append(
            f"labels: supervised positions differ ({len(got)} {then}, {len(want)} {now}; first at target {i})"
        )
    else:
        labels = np.asarray(enc.inputs["labels"], dtype=np.int64)[want]
        bad = labels != got_targets
        if bad.any():
            i = int(np.argmax(bad))
            diffs.append(
                f"input_ids: {int(bad.sum())} target id(s) differ, first at position {int(want[i])} "
                f"({int(labels[i])} {now}, {int(got_targets[i])} {then})"
            )
    if other_ids is not None and other_ids.shape == ids.shape and not diffs and (other_ids != ids).any():
        i = int(np.argmax(other_ids != ids))
        diffs.append(f"input_ids[{i}] ({int(ids[i])} {now}, {int(other_ids[i])} {then})")
    if other.encoding_hash != enc.encoding_hash:
        diffs.append(
            f"encoding hash differs ({then} {other.encoding_hash[:12]}, {now} {enc.encoding_hash[:12]})"
            + ("" if diffs else ": image_grid_thw or image bytes")
        )
    return diffs


def first_encoding_difference(
    enc: EncodedRow, other: EncodedRow | CachedSample, names: tuple[str, str] = ("now", "in cache")
) -> str | None:
    """The first difference ``encoding_differences`` finds, or None when the hashes agree."""
    if enc.encoding_hash == other.encoding_hash:
        return None
    return encoding_differences(enc, other, names)[0]


def row_digest(row: Row) -> str:
    """sha256 of what encoding reads from a row: its messages and its images' bytes (hex).

    Paths and extra fields stay out (moving a dataset keeps its digests). Under one cache fingerprint
    (template, tokenizer, encoding settings and library versions equal) equal digests give equal
    encodings, so the cache stage tells unchanged rows apart without encoding them.
    """
    h = hashlib.sha256(b"messages")
    h.update(json.dumps(row.messages, sort_keys=True, ensure_ascii=False).encode())
    for img in row.images:
        h.update(b"img")
        h.update(file_sha256(img).encode())
    return h.hexdigest()


def fix_placeholder_ids(template: Any, tokenizer: Any) -> dict[str, int]:
    """Set the template instance's image/video placeholder ids from the tokenizer. Returns them."""
    fixed: dict[str, int] = {}
    vocab = tokenizer.get_vocab()
    for attr, token in _PLACEHOLDER_ATTRS.items():
        if not hasattr(template, attr):
            continue
        if token not in vocab:
            raise CompatibilityError(
                f"tokenizer has no {token!r} token, but template {type(template).__name__} needs it"
            )
        setattr(template, attr, int(vocab[token]))
        fixed[attr] = int(vocab[token])
    return fixed


def effective_pixel_limits(processor: Any) -> dict[str, Any]:
    """The pixel limits that really apply: env vars, qwen_vl_utils constants, processor settings."""
    out: dict[str, Any] = {"env": {k: os.environ.get(k) for k in _PIXEL_ENV if os.environ.get(k)}}
    try:
        from qwen_vl_utils import vision_process

        for name in (
            "IMAGE_FACTOR",
            "MIN_PIXELS",
            "MAX_PIXELS",
            "MAX_RATIO",
            "IMAGE_MIN_TOKEN_NUM",
            "IMAGE_MAX_TOKEN_NUM",
            "SPATIAL_MERGE_SIZE",
        ):
            if hasattr(vision_process, name):
                out[name.lower()] = getattr(vision_process, name)
    except ImportError:
        pass
    ip = getattr(processor, "image_processor", None)
    if ip is not None:
        for name in ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels", "size"):
            val = getattr(ip, name, None)
            if val is not None:
                out[f"processor.{name}"] = val
    # Normalise to plain JSON (processor settings can be SizeDict objects).
    return json.loads(json.dumps(out, sort_keys=True, default=lambda o: {k: v for k, v in vars(o).items()}))


class RowEncoder:
    """Encodes rows with an ms-swift template, strictly. Build it with ``from_config``."""

    def __init__(self, template: Any, processor: Any, settings: dict[str, Any]):
        self.template = template
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self._settings = settings

    @classmethod
    def from_config(cls, cfg: DistillConfig, processor: Any = None, mode: str = "train") -> RowEncoder:
        """The student's template with the config's encoding settings (max_length, truncation, pixels)."""
        from swift.template import get_template

        from pipeline.config import model_location

        if processor is None:
            from pipeline.trust import STUDENT_KEY, require_trusted

            student = model_location(cfg.model.model, "model.model", getattr(cfg, "config_path", None))
            require_trusted(student, getattr(cfg.model, "trust_remote_code", False), STUDENT_KEY)
            from pipeline.processors import load_processor

            processor = load_processor(student, cfg.model.model_type)
        truncation = cfg.data.truncation_strategy
        kwargs: dict[str, Any] = {
            "template_type": cfg.model.template,
            "default_system": cfg.data.system,
            "max_length": cfg.data.max_length,
            # ms-swift's "delete" is the template's "raise", then the row is dropped; we record it.
            "truncation_strategy": "raise" if truncation == "delete" else truncation,
            "max_pixels": cfg.data.max_pixels,
            "loss_scale": cfg.data.loss_scale,
            "remove_unused_columns": False,
            "padding_side": "right",
        }
        template = get_template(processor, **kwargs)
        template.set_mode(mode)
        ids = fix_placeholder_ids(template, getattr(processor, "tokenizer", processor))
        tok = getattr(processor, "tokenizer", processor)
        settings = {
            "template": {k: v for k, v in kwargs.items()},
            "truncation_strategy": truncation,
            "placeholder_ids": ids,
            "template_meta": {
                "class": type(template).__name__,
                "stop_words": [str(s) for s in (template.template_meta.stop_words or [])],
                "default_system": template.template_meta.default_system,
            },
            "pixels": effective_pixel_limits(processor),
            "tokenizer_len": len(tok),
            "libraries": encoding_library_versions(),
        }
        return cls(template, processor, settings)

    def settings(self) -> dict[str, Any]:
        """Everything that shapes encoding (goes into the cache fingerprint)."""
        return dict(self._settings)

    def encode(self, row: Row, check: bool = True) -> EncodedRow:
        """Encode one row; raise ``DataError`` (with ``.reason``) if it cannot be used."""
        if check:
            problem = check_row(row)
            if problem is not None:
                raise _row_error(row, *problem)
        try:
            inputs = self.template.encode(row.swift_inputs())
        except Exception as exc:  # ms-swift raises MaxLengthError (a ValueError) and others
            reason = TRUNCATED if type(exc).__name__ == "MaxLengthError" else ENCODE_FAILED
            raise _row_error(row, reason, f"field 'messages': {type(exc).__name__}: {exc}") from exc
        labels = inputs.get("labels")
        if labels is None or not any(v != IGNORE_INDEX for v in labels[1:]):
            raise _row_error(row, TRUNCATED, "field 'messages': no supervised token left after encoding")
        if self._settings["truncation_strategy"] in ("left", "right"):
            self._check_not_cut(row, inputs)
        grid = inputs.get("image_grid_thw")
        digest = encoding_hash(inputs["input_ids"], labels, grid, tuple(self.image_hashes(row)))
        return EncodedRow(row.sample_id, inputs, digest)

    def _check_not_cut(self, row: Row, inputs: dict[str, Any]) -> None:
        max_length = self._settings["template"]["max_length"]
        if max_length is None or len(inputs["input_ids"]) < max_length:
            return
        saved = self.template.max_length
        try:
            self.template.max_length = None
            full = self.template.encode(row.swift_inputs())
        finally:
            self.template.max_length = saved
        n_full = sum(v != IGNORE_INDEX for v in full["labels"])
        n_cut = sum(v != IGNORE_INDEX for v in inputs["labels"])
        if n_cut != n_full:
            raise _row_error(
                row, TRUNCATED, f"max_length {max_length} cuts {n_full - n_cut} supervised tokens"
            )

    def image_hashes(self, row: Row) -> list[str]:
        return [file_sha256(p) for p in row.images]

    def encode_prompt(self, row: Row) -> dict[str, Any]:
        """Generation inputs: the row without its final assistant turn, ending in the generation prefix.

        Same template and settings as ``encode`` (images expand identically), in the template's
        inference mode: no labels, and its collator pads on the left. Raises ``DataError`` when the
        template cannot encode the prompt.
        """
        msgs = [dict(m) for m in row.messages]
        if msgs and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]
        inputs: dict[str, Any] = {"messages": msgs}
        if row.images:
            inputs["images"] = list(row.images)
        saved = self.template.mode
        self.template.set_mode("transformers")
        try:
            return self.template.encode(inputs)
        except Exception as exc:  # ms-swift raises MaxLengthError (a ValueError) and others
            reason = TRUNCATED if type(exc).__name__ == "MaxLengthError" else ENCODE_FAILED
            raise _row_error(row, reason, f"field 'messages' (prompt): {type(exc).__name__}: {exc}") from exc
        finally:
            self.template.set_mode(saved)


def _row_error(row: Row, reason: str, detail: str) -> DataError:
    return DataError(f"{row.source}: sample {row.sample_id!r}: {reason}: {detail}", reason, detail)
