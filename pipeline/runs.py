"""Run plumbing shared by every stage: which file a split is, its teacher cache, and how a cached row
compares with the row encoded now.

One home for each of these, so the cache stage, training, evaluation and inspection cannot drift
(which rows a training run uses, and binding them to a cache with every other row accounted for, is
``pipeline.train.coverage``):

- ``split_file`` / ``split_path``: the JSONL behind ``train`` / ``val`` / ``test`` (or a path).
- ``open_cache_dir`` / ``open_split_cache``: a cache (by directory, or a config's split) under ONE
  explicit validation policy (``CachePolicy``).
- ``as_cached``: a dataset row as its cache row encoded it (a teacher-written response in place).
- ``encoding_differences``: every way a cached row differs from the row encoded now.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data import Row
from pipeline.errors import CacheMismatchError, ConfigError

if TYPE_CHECKING:
    from pipeline.cache.format import CachedSample
    from pipeline.cache.reader import CacheReader
    from pipeline.config import DistillConfig
    from pipeline.encoding import EncodedRow, RowEncoder

SPLIT_KEYS = {"train": "dataset", "val": "val_dataset"}


class CachePolicy(enum.Enum):
    """How much of a cache is checked when it is opened (checksums are always verified).

    ``FINGERPRINT``: the whole fingerprint this config would produce (teacher weights, tokenizer,
    template, dataset, k, temperature): training, which must reproduce the cache exactly.
    ``ENCODING``: the loss temperature on open, then every row's encoding hash as it is used:
    evaluation, which never loads the teacher and so cannot hash its weights.
    ``FORMAT``: the format alone (checksums, layout, shard fingerprints): inspection of any cache.
    """

    FINGERPRINT = "fingerprint"
    ENCODING = "encoding"
    FORMAT = "format"


def split_file(cfg: DistillConfig, split: str) -> str:
    """The one JSONL file of ``split`` (``train`` or ``val``) in ``cfg``."""
    if split not in SPLIT_KEYS:
        raise ConfigError(f"split {split!r}: choose one of {sorted(SPLIT_KEYS)}")
    files = getattr(cfg.data, SPLIT_KEYS[split])
    if len(files) != 1:
        raise ConfigError(f"data.{SPLIT_KEYS[split]}: expected exactly one JSONL file per split, got {files}")
    return files[0]


def split_path(cfg: DistillConfig, split: str | Path) -> Path:
    """``train`` / ``val`` -> the config's file; ``test`` -> ``test.jsonl`` beside val; else a JSONL path."""
    if str(split) in SPLIT_KEYS:
        if str(split) == "val" and not cfg.data.val_dataset:
            raise ConfigError(
                "data.val_dataset: empty, so there is no val/test split; pass a JSONL path as the split"
            )
        return Path(split_file(cfg, str(split)))
    if str(split) == "test":
        return split_path(cfg, "val").with_name("test.jsonl")
    path = Path(split)
    if path.suffix != ".jsonl":
        raise ConfigError(f"split {split!r}: expected 'train', 'val', 'test' or a path to a .jsonl file")
    return path


def cache_split_dir(cfg: DistillConfig, split: str) -> Path:
    if not cfg.custom.teacher_cache:
        raise ConfigError("custom.teacher_cache is not set")
    return Path(cfg.custom.teacher_cache) / split


def open_cache_dir(
    root: str | Path,
    policy: CachePolicy = CachePolicy.FORMAT,
    *,
    expected_fingerprint: dict[str, Any] | None = None,
    loss_temperature: float | None = None,
) -> CacheReader:
    """THE cache opener: a reader over the split directory ``root`` under ``policy``.

    ``FINGERPRINT`` needs ``expected_fingerprint``; ``ENCODING`` checks ``loss_temperature`` (when
    given) against the cache's. A directory that holds splits but no manifest of its own gets a hint.
    """
    from pipeline.cache.format import MANIFEST_NAME
    from pipeline.cache.reader import CacheReader
    from pipeline.errors import CacheFormatError

    root = Path(root)
    if not (root / MANIFEST_NAME).is_file():
        splits = (
            sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file()) if root.is_dir() else []
        )
        hint = f" (it holds splits {splits}: pass e.g. {root / splits[0]})" if splits else ""
        raise CacheFormatError(f"{root}: no {MANIFEST_NAME}, not a finished cache split{hint}")
    if policy is CachePolicy.FINGERPRINT:
        if expected_fingerprint is None:
            raise ValueError("the fingerprint policy needs the fingerprint the run would produce")
        return CacheReader(root, expected_fingerprint=expected_fingerprint)
    reader = CacheReader(root)
    if policy is CachePolicy.ENCODING and loss_temperature is not None:
        cached_t = reader.manifest["fingerprint"].get("loss_temperature")
        if cached_t is not None and float(cached_t) != float(loss_temperature):
            raise CacheMismatchError(
                f"{root}: cache built at loss_temperature {cached_t}, config says {loss_temperature}",
                {"loss_temperature": (loss_temperature, cached_t)},
            )
    return reader


def open_split_cache(
    cfg: DistillConfig,
    split: str,
    policy: CachePolicy,
    *,
    encoder: RowEncoder | None = None,
    required: bool = True,
) -> CacheReader | None:
    """Open ``split``'s cache of ``cfg`` under ``policy``; ``None`` when absent and not ``required``."""
    from pipeline.cache.format import MANIFEST_NAME

    root = cache_split_dir(cfg, split)
    if not (root / MANIFEST_NAME).is_file():
        if required:
            raise CacheMismatchError(
                f"{root}: no teacher cache here (run `distill cache --config ...` first)"
            )
        return None
    expected = None
    if policy is CachePolicy.FINGERPRINT:
        from pipeline.fingerprint import build_fingerprint

        if encoder is None:
            raise ValueError("the fingerprint policy needs the encoder the run will use")
        expected = build_fingerprint(cfg, encoder)
    return open_cache_dir(
        root, policy, expected_fingerprint=expected, loss_temperature=cfg.custom.loss_temperature
    )


def encoding_differences(cached: CachedSample, enc: EncodedRow) -> list[str]:
    """Every way ``cached`` differs from ``enc`` (the row encoded now), most telling first; ``[]`` if equal.

    Order: sequence length, the first supervised position, positions, target ids, then the encoding
    hash (which also covers the image grid and image bytes).
    """
    diffs: list[str] = []
    ids = enc.inputs["input_ids"]
    if cached.num_tokens != len(ids):
        diffs.append(f"input_ids length ({len(ids)} now, {cached.num_tokens} in cache)")
    want = np.asarray(enc.target_positions(), dtype=np.int64)
    got = np.asarray(cached.positions, dtype=np.int64)
    if want.size and (got.size == 0 or got[0] != want[0]):
        diffs.append(
            f"first supervised position (the first response token) is {want[0]} now, "
            f"{int(got[0]) if got.size else 'none'} in the cache"
        )
    if got.shape != want.shape or (got != want).any():
        n = min(len(got), len(want))
        neq = got[:n] != want[:n]
        i = int(np.argmax(neq)) if neq.any() else n
        diffs.append(
            f"labels: supervised positions differ ({len(got)} cached, {len(want)} now; first at target {i})"
        )
    else:
        labels = np.asarray(enc.inputs["labels"], dtype=np.int64)[want]
        bad = labels != cached.target_ids
        if bad.any():
            i = int(np.argmax(bad))
            diffs.append(
                f"input_ids: {int(bad.sum())} target id(s) differ, first at position {int(want[i])} "
                f"({int(labels[i])} now, {int(cached.target_ids[i])} in cache)"
            )
    if cached.encoding_hash != enc.encoding_hash:
        diffs.append(
            f"encoding hash differs (cache {cached.encoding_hash[:12]}, now {enc.encoding_hash[:12]})"
            + ("" if diffs else ": image_grid_thw or image bytes")
        )
    return diffs


def as_cached(row: Row, sample: CachedSample) -> Row:
    """``row`` as the cache encoded it for ``sample``: with the teacher's response when the teacher wrote
    it (that response is then the reference for CE and KD alike)."""
    from pipeline.generation import with_response

    return with_response(row, sample.written_text) if sample.teacher_written else row


def cache_mismatch_field(enc: EncodedRow, cached: CachedSample) -> str | None:
    """The first difference ``encoding_differences`` finds, or None when the row matches its cache."""
    if enc.encoding_hash == cached.encoding_hash:
        return None
    return encoding_differences(cached, enc)[0]


def require_cached_encoding(row: Row, enc: EncodedRow, cached: CachedSample) -> None:
    """Raise ``CacheMismatchError`` naming file, sample and first difference unless ``row`` (encoded now
    as ``enc``) is what its cache row was built from. Training and evaluation both call this."""
    bad = cache_mismatch_field(enc, cached)
    if bad is not None:
        raise CacheMismatchError(
            f"{row.source}: sample {row.sample_id!r}: encoding differs from the teacher cache "
            f"(first difference: {bad}); the row changed since it was cached: run `distill cache` to re-cache "
            "changed rows",
            {f"sample.{row.sample_id}": ("encoding now", bad)},
        )
