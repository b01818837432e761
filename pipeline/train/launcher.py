"""Run training from a config through ms-swift's Python API (no shelling out to ``swift``).

``DistillSft`` (``pipeline.train.sft_pipeline``, imported when training starts: it imports ms-swift)
subclasses ms-swift's ``SwiftSft`` pipeline: ms-swift loads the model, applies the
tuner (LoRA or full) and runs the Trainer loop; we supply the template (the shared ``RowEncoder``'s,
so training encodes exactly as caching did), strict datasets, the trainer class and the teacher.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError
from pipeline.train.coverage import SplitRows, check_left_out, load_split
from pipeline.versions import check_versions

if TYPE_CHECKING:
    from pipeline.config import DistillConfig

logger = logging.getLogger(__name__)


def make_output_dir(cfg: DistillConfig) -> None:
    """Create ``train.output_dir``; a path that is a file (or under one) or not writable is a
    ``ConfigError`` naming the key, not an ``OSError`` traceback."""
    out = cfg.train.output_dir
    try:
        os.makedirs(out, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise ConfigError(
            f"{cfg.config_path or 'config'}: train.output_dir: {out!r} is not a directory "
            f"({exc.strerror}: {exc.filename}); choose another output_dir"
        ) from exc
    except PermissionError as exc:
        raise ConfigError(
            f"{cfg.config_path or 'config'}: train.output_dir: cannot create {out!r} ({exc.strerror})"
        ) from exc


def run_training(cfg: DistillConfig) -> Any:
    """Train per ``cfg`` (SFT, cached GKD or live GKD); returns ms-swift's train message dict."""
    check_versions()
    if cfg.custom.variant.distils and cfg.rlhf is not None and cfg.rlhf.seq_kd:
        raise ConfigError("rlhf.seq_kd: sequence-level KD is not supported")
    make_output_dir(cfg)
    cfg = with_resume_checked(cfg)
    from pipeline.train.swift_args import swift_run_args

    args = swift_run_args(cfg, "sft")
    # eval/sft_loss means the same for every variant: it selects the model (eval/loss would mix in KL).
    args.training_args.metric_for_best_model = "sft_loss"
    args.training_args.greater_is_better = False
    from pipeline.train.sft_pipeline import DistillSft

    pipeline = DistillSft(args, cfg, training_splits(cfg))
    return pipeline.main()


def with_resume_checked(cfg: DistillConfig) -> DistillConfig:
    """``cfg`` with ``train.extra.resume_from_checkpoint`` resolved to a whole checkpoint (``last`` /
    ``true`` pick the newest whole one; a partial one is refused naming the last whole one), before
    ms-swift reads it (an adapter resume loads it with the model)."""
    from pipeline.train.checkpoints import RESUME_KEY, resolve_resume

    if RESUME_KEY not in cfg.train.extra:
        return cfg
    extra = {k: v for k, v in cfg.train.extra.items() if k != RESUME_KEY}
    resume = resolve_resume(cfg)
    if resume is not None:
        logger.info("resuming from %s", resume)
        extra[RESUME_KEY] = resume
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, extra=extra))


def training_splits(cfg: DistillConfig) -> list[SplitRows]:
    """The train split (and the val split, when configured), every row checked: a missing file, a
    split with no usable row, or (custom.strict) one bad row fails here, before the model loads."""
    strict = cfg.custom.strict
    # Rows without a response are usable when the cache holds a teacher-written one for them.
    written = cfg.custom.variant.reads_cache and cfg.custom.written_responses != "off"
    splits = [load_split("train", cfg.data.dataset, strict=strict, need_response=not written)]
    if cfg.data.val_dataset:
        splits.append(load_split("val", cfg.data.val_dataset, strict=strict))
    if not cfg.custom.variant.reads_cache:  # the cached variant checks once bound to its cache
        for split in splits:
            check_left_out(split, cfg.custom.max_skipped_fraction, strict=strict)
    return splits
