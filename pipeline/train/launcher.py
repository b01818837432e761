"""Run training from a config through ms-swift's Python API (no shelling out to ``swift``).

``DistillSft`` subclasses ms-swift's ``SwiftSft`` pipeline (importing this module imports ms-swift): ms-swift loads the model, applies the
tuner (LoRA or full) and runs the Trainer loop; we supply the template (the shared ``RowEncoder``'s,
so training encodes exactly as caching did), strict datasets, the trainer class and the teacher.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from swift.pipelines import SwiftSft

from pipeline.cache.policy import CachePolicy
from pipeline.config import needs_live_teacher
from pipeline.encoding import RowEncoder
from pipeline.errors import CacheMismatchError, ConfigError
from pipeline.models import load_teacher
from pipeline.splits import open_split_cache
from pipeline.train.coverage import SplitRows, bind_to_cache, check_left_out, load_split, write_report
from pipeline.train.data import EncodedDataset
from pipeline.train.trainer import DistillSettings, resolve_trainer_cls
from pipeline.versions import check_versions

if TYPE_CHECKING:
    from pipeline.config import DistillConfig


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
        """Bind the splits to their caches, build the datasets, the teacher and the trainer; train."""
        cfg, args = self.cfg, self.args
        train_ds, val_ds = self._datasets()
        args.save_args()
        self.model = self.prepare_model(args, self.model, template=self.template, train_dataset=train_ds)
        teacher = self._live_teacher()
        from pipeline.train.telemetry import TelemetryCallback

        trainer = resolve_trainer_cls(cfg.custom.variant)(
            model=self.model,
            args=args.training_args,
            template=self.template,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            distill=self._settings(),
            teacher_model=teacher,
            encoder=self.encoder,
        )
        trainer.add_callback(TelemetryCallback(cfg))
        if teacher is not None:
            teacher.to(trainer.args.device)
        self.trainer = trainer
        return self.train(trainer)

    def _datasets(self) -> tuple[EncodedDataset, EncodedDataset | None]:
        """The train (and val) datasets, each split bound to its cache where the variant reads one,
        its left-out rows checked and reported."""
        cfg, variant = self.cfg, self.cfg.custom.variant
        train_split, *val_split = self.splits
        partial = cfg.custom.allow_partial_cache
        train_cache = eval_cache = None
        if variant.reads_cache:
            train_cache = open_split_cache(cfg, "train", CachePolicy.FINGERPRINT, encoder=self.encoder)
            train_split = bind_to_cache(train_split, train_cache, allow_partial=partial)
            self._check_cache_vocab(train_cache)
        # every distilling variant reports eval/kl_loss against a cached val split when there is one
        if variant.distils and val_split and cfg.custom.teacher_cache:
            eval_cache = open_split_cache(
                cfg, "val", CachePolicy.FINGERPRINT, encoder=self.encoder, required=False
            )
            if eval_cache is not None:
                val_split = [bind_to_cache(val_split[0], eval_cache, allow_partial=partial)]
        for split in (train_split, *val_split):
            check_left_out(split, cfg.custom.max_skipped_fraction, strict=cfg.custom.strict)
        write_report([train_split, *val_split], self.args.output_dir)
        val_rows = val_split[0].rows if val_split else []
        on_policy = cfg.rlhf is not None and cfg.rlhf.lmbda > 0  # sampling needs the raw rows
        train_ds = EncodedDataset(train_split.rows, self.encoder, train_cache, keep_rows=on_policy)
        return train_ds, EncodedDataset(val_rows, self.encoder, eval_cache) if val_rows else None

    def _live_teacher(self) -> Any:
        """The live teacher, checked against the student, when the variant needs one for this lmbda."""
        if not needs_live_teacher(self.cfg):
            return None
        from pipeline.teacher.compat import check_pair

        check_pair(self.cfg)
        return load_teacher(self.cfg)

    def _settings(self) -> DistillSettings:
        cfg, rlhf = self.cfg, self.cfg.rlhf
        return DistillSettings(
            variant=cfg.custom.variant,
            beta=rlhf.beta if rlhf else 0.0,
            sft_alpha=rlhf.sft_alpha if rlhf else 1.0,
            lmbda=rlhf.lmbda if rlhf else 0.0,
            loss_temperature=cfg.custom.loss_temperature,
            sampling_temperature=rlhf.temperature if rlhf else 1.0,
            max_completion_length=rlhf.max_completion_length if rlhf else 64,
            real_vocab=len(self.encoder.tokenizer),
            seed=cfg.train.seed,
        )

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


FINAL_DIR = (
    "final"  # <output_dir>/final: the weights at the end of training, a stable path for the next stage
)
