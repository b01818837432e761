"""Which file a split is, and its teacher cache, for a config.

``split_file`` / ``split_path``: the JSONL behind ``train`` / ``val`` / ``test`` (or a path).
``open_split_cache``: a config's split cache under a ``CachePolicy``; the fingerprint policy builds the
fingerprint this config would produce (``pipeline.cache`` knows no models, so it is built here).
Which rows a training run uses, and binding them to a cache with every other row accounted for, is
``pipeline.train.coverage``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import CacheMismatchError, ConfigError

if TYPE_CHECKING:
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
    from pipeline.cache.policy import CachePolicy, open_cache_dir

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
        expected = build_fingerprint(cfg, encoder, split_file(cfg, split))
    return open_cache_dir(
        root, policy, expected_fingerprint=expected, loss_temperature=cfg.custom.loss_temperature
    )
