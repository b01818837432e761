"""Run training from a config through ms-swift's Python API (no shelling out to ``swift``).

``DistillSft`` (``pipeline.train.sft_pipeline``, imported when training starts: it imports ms-swift)
subclasses ms-swift's ``SwiftSft`` pipeline: ms-swift loads the model, applies the
tuner (LoRA or full) and runs the Trainer loop; we supply the template (the shared ``RowEncoder``'s,
so training encodes exactly as caching did), strict datasets, the trainer class and the teacher.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError
from pipeline.train.coverage import SplitRows, check_left_out, load_split
from pipeline.versions import check_versions

if TYPE_CHECKING:
    from pipeline.config import DistillConfig


def run_training(cfg: DistillConfig) -> Any:
    """Train per ``cfg`` (SFT, cached GKD or live GKD); returns ms-swift's train message dict."""
    check_versions()
    if cfg.custom.variant.distils and cfg.rlhf is not None and cfg.rlhf.seq_kd:
        raise ConfigError("rlhf.seq_kd: sequence-level KD is not supported")
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    from pipeline.train.swift_args import swift_run_args

    args = swift_run_args(cfg, "sft")
    # eval/sft_loss means the same for every variant: it selects the model (eval/loss would mix in KL).
    args.training_args.metric_for_best_model = "sft_loss"
    args.training_args.greater_is_better = False
    from pipeline.train.sft_pipeline import DistillSft

    pipeline = DistillSft(args, cfg, training_splits(cfg))
    return pipeline.main()


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
