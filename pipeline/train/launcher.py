"""Run training from a config through ms-swift's Python API (no shelling out to ``swift``).

``DistillSft`` subclasses ms-swift's ``SwiftSft`` pipeline: ms-swift loads the model, applies the
tuner (LoRA or full) and runs the Trainer loop; we supply the template (the shared ``RowEncoder``'s,
so training encodes exactly as caching did), strict datasets, the trainer class and the teacher.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from pipeline.cache.policy import CachePolicy
from pipeline.config import needs_live_teacher
from pipeline.errors import CacheMismatchError, ConfigError
from pipeline.models import load_teacher
from pipeline.splits import open_split_cache
from pipeline.train.coverage import SplitRows, bind_to_cache, check_left_out, load_split, write_report
from pipeline.versions import check_versions

if TYPE_CHECKING:
    from pipeline.config import DistillConfig


def _make_pipeline_cls() -> type:
    from swift.pipelines import SwiftSft

    from pipeline.encoding import RowEncoder
    from pipeline.train.data import EncodedDataset
    from pipeline.train.trainer import DistillSettings, resolve_trainer_cls

    class DistillSft(SwiftSft):
        """ms-swift's SFT pipeline with our template, datasets, trainer and teacher."""

        model: Any
        processor: Any

        def __init__(self, args: Any, cfg: DistillConfig, splits: list[SplitRows]):
            self.cfg = cfg
            self.splits = splits  # checked before the model loads (run_training)
            super().__init__(args)

        def _prepare_template(self) -> None:
            super()._prepare_template()
            if self.args.packing or self.args.padding_free:
                raise ConfigError(
                    "packing / padding_free batches are not supported by the distillation trainers "
                    "(cached targets are per sample); remove them from train.extra"
                )
            encoder = RowEncoder.from_config(self.cfg, processor=self.processor, mode="train")
            if encoder.template.use_model:
                encoder.template.model = self.model
            self.encoder = encoder
            self.template = encoder.template

        def run(self) -> Any:
            cfg, args = self.cfg, self.args
            variant = cfg.custom.trainer_variant
            lmbda = cfg.rlhf.lmbda if cfg.rlhf is not None else 0.0
            train_split, *val_split = self.splits
            partial = cfg.custom.allow_partial_cache
            train_cache = eval_cache = None
            if variant == "gkd_cached":
                train_cache = open_split_cache(cfg, "train", CachePolicy.FINGERPRINT, encoder=self.encoder)
                train_split = bind_to_cache(train_split, train_cache, allow_partial=partial)
                self._check_cache_vocab(train_cache)
            if variant != "sft" and val_split and cfg.custom.teacher_cache:
                eval_cache = open_split_cache(
                    cfg, "val", CachePolicy.FINGERPRINT, encoder=self.encoder, required=False
                )
                if eval_cache is not None:
                    val_split = [bind_to_cache(val_split[0], eval_cache, allow_partial=partial)]
            for split in (train_split, *val_split):
                check_left_out(split, cfg.custom.max_skipped_fraction, strict=cfg.custom.strict)
            write_report([train_split, *val_split], args.output_dir)
            train_rows = train_split.rows
            val_rows = val_split[0].rows if val_split else []
            train_ds = EncodedDataset(train_rows, self.encoder, train_cache, keep_rows=lmbda > 0)
            val_ds = EncodedDataset(val_rows, self.encoder, eval_cache) if val_rows else None
            args.save_args()
            self.model = self.prepare_model(args, self.model, template=self.template, train_dataset=train_ds)
            teacher = None
            if needs_live_teacher(self.cfg):
                from pipeline.teacher.compat import check_pair

                check_pair(cfg)
                teacher = load_teacher(cfg)
            settings = DistillSettings(
                variant=variant,
                beta=cfg.rlhf.beta if cfg.rlhf else 0.0,
                sft_alpha=cfg.rlhf.sft_alpha if cfg.rlhf else 1.0,
                lmbda=lmbda,
                loss_temperature=cfg.custom.loss_temperature,
                sampling_temperature=cfg.rlhf.temperature if cfg.rlhf else 1.0,
                max_completion_length=cfg.rlhf.max_completion_length if cfg.rlhf else 64,
                real_vocab=len(self.encoder.tokenizer),
                seed=cfg.train.seed,
            )
            from pipeline.train.telemetry import TelemetryCallback

            trainer = resolve_trainer_cls(variant)(
                model=self.model,
                args=args.training_args,
                template=self.template,
                train_dataset=train_ds,
                eval_dataset=val_ds,
                distill=settings,
                teacher_model=teacher,
                encoder=self.encoder,
            )
            trainer.add_callback(TelemetryCallback(cfg))
            if teacher is not None:
                teacher.to(trainer.args.device)
            self.trainer = trainer
            return self.train(trainer)

        def train(self, trainer: Any) -> Any:
            result = super().train(trainer)
            # Checkpoint rotation may keep the best rather than the last checkpoint; the next stage
            # wants the end-of-training weights at a fixed path.
            trainer.save_model(os.path.join(self.args.output_dir, FINAL_DIR))
            return result

        def _check_cache_vocab(self, cache: Any) -> None:
            width = self.model.get_output_embeddings().weight.shape[0]
            if cache.vocab_size > width:
                raise CacheMismatchError(
                    f"cache vocabulary {cache.vocab_size} exceeds the student's logit width {width}"
                )

    return DistillSft


def run_training(cfg: DistillConfig) -> Any:
    """Train per ``cfg`` (SFT, cached GKD or live GKD); returns ms-swift's train message dict."""
    check_versions()
    if cfg.custom.trainer_variant != "sft" and cfg.rlhf is not None and cfg.rlhf.seq_kd:
        raise ConfigError("rlhf.seq_kd: sequence-level KD is not supported")
    os.makedirs(cfg.train.output_dir, exist_ok=True)
    from pipeline.train.swift_args import swift_run_args

    args = swift_run_args(cfg, "sft")
    # eval/sft_loss means the same for every variant: it selects the model (eval/loss would mix in KL).
    args.training_args.metric_for_best_model = "sft_loss"
    args.training_args.greater_is_better = False
    pipeline = _make_pipeline_cls()(args, cfg, training_splits(cfg))
    return pipeline.main()


def training_splits(cfg: DistillConfig) -> list[SplitRows]:
    """The train split (and the val split, when configured), every row checked: a missing file, a
    split with no usable row, or (custom.strict) one bad row fails here, before the model loads."""
    strict = cfg.custom.strict
    # Rows without a response are usable when the cache holds a teacher-written one for them.
    written = cfg.custom.trainer_variant == "gkd_cached" and cfg.custom.written_responses != "off"
    splits = [load_split("train", cfg.data.dataset, strict=strict, need_response=not written)]
    if cfg.data.val_dataset:
        splits.append(load_split("val", cfg.data.val_dataset, strict=strict))
    if cfg.custom.trainer_variant != "gkd_cached":  # the cached variant checks once bound to its cache
        for split in splits:
            check_left_out(split, cfg.custom.max_skipped_fraction, strict=strict)
    return splits


FINAL_DIR = (
    "final"  # <output_dir>/final: the weights at the end of training, a stable path for the next stage
)
