"""Which file a split is, and its teacher cache, for a config.

``split_file`` / ``split_path``: the JSONL behind ``train`` / ``val`` / ``test`` (or a path).
``open_split_cache``: a config's split cache under a ``CachePolicy``; the fingerprint policy builds the
fingerprint this config would produce (``pipeline.cache`` knows no models, so it is built here).
Which rows a training run uses, and binding them to a cache with every other row accounted for, is
``pipeline.train.coverage``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import CacheMismatchError, ConfigError

if TYPE_CHECKING:
    from pipeline.cache.cachedir import Manifest
    from pipeline.cache.policy import CachePolicy
    from pipeline.cache.reader import CacheReader
    from pipeline.config import DistillConfig
    from pipeline.encoding import RowEncoder

SPLIT_KEYS = {"train": "dataset", "val": "val_dataset"}


def split_file(cfg: DistillConfig, split: str) -> str:
    """The one JSONL file of ``split`` (``train`` or ``val``) in ``cfg``."""
    if split not in SPLIT_KEYS:
        raise ConfigError(f"split {split!r}: choose one of {sorted(SPLIT_KEYS)}")
    files = getattr(cfg.data, SPLIT_KEYS[split])
    if len(files) != 1:
        raise ConfigError(f"data.{SPLIT_KEYS[split]}: expected exactly one JSONL file per split, got {files}")
    return files[0]


def split_files(cfg: DistillConfig, split: str) -> list[str]:
    """The JSONL files of ``split`` (``train`` or ``val``): one cache directory serves them all, since
    rows are keyed by sample_id, whichever file holds them."""
    if split not in SPLIT_KEYS:
        raise ConfigError(f"split {split!r}: choose one of {sorted(SPLIT_KEYS)}")
    files = list(getattr(cfg.data, SPLIT_KEYS[split]))
    if not files:
        raise ConfigError(f"data.{SPLIT_KEYS[split]}: no JSONL file for the {split} split")
    return files


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


def open_split_cache(
    cfg: DistillConfig,
    split: str,
    policy: CachePolicy,
    *,
    encoder: RowEncoder | None = None,
    required: bool = True,
) -> CacheReader | None:
    """Open ``split``'s cache of ``cfg`` under ``policy``; ``None`` when absent and not ``required``."""
    from pipeline.cache.cachedir import CacheDir
    from pipeline.cache.policy import CachePolicy, open_cache_dir

    where = CacheDir.of(cfg).split(split)
    root = where.root
    if not where.finished:
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
        expected = accept_recorded_top_k(build_fingerprint(cfg, encoder), where.manifest())
    return open_cache_dir(
        root, policy, expected_fingerprint=expected, loss_temperature=cfg.custom.loss_temperature
    )


def accept_recorded_top_k(expected: dict[str, Any], manifest: Manifest) -> dict[str, Any]:
    """``expected`` with the cache's ``top_k`` when both mean "every real id": caches written before
    the fingerprint recorded the effective k hold the k they were asked for (e.g. 100000 for a
    422-token vocabulary), which is the same cache as k = 422."""
    recorded = manifest.fingerprint.get("top_k")
    vocab = (expected.get("tokenizer") or {}).get("len")
    if isinstance(recorded, int) and isinstance(vocab, int) and expected.get("top_k") == vocab <= recorded:
        return {**expected, "top_k": recorded}
    return expected
