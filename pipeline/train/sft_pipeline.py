"""``DistillSft``: ms-swift's SFT pipeline with our template, datasets, trainer and teacher.

ms-swift loads the model, applies the tuner (LoRA or full) and runs the Trainer loop; we supply the
template (the shared ``RowEncoder``'s, so training encodes exactly as caching did), strict datasets
bound to their caches, the trainer class for the variant and the live teacher when it needs one.
Importing this module imports ms-swift (seconds, and its log lines): ``pipeline.train.launcher``
imports it only when training starts.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from swift.pipelines import SwiftSft

from pipeline.cache.policy import CachePolicy
from pipeline.config import needs_live_teacher
from pipeline.encoding import RowEncoder
from pipeline.errors import CacheMismatchError, ConfigError, DiskFullError, first_line
from pipeline.models import load_teacher
from pipeline.splits import open_split_cache
from pipeline.train.checkpoints import is_disk_full_anywhere, stopped_line
from pipeline.train.coverage import (
    SplitRows,
    bind_to_cache,
    check_left_out,
    check_rows_against_cache,
    write_report,
)
from pipeline.train.data import EncodedDataset, MemoBudget
from pipeline.train.preemption import PreemptionCallback, TrainingStopped
from pipeline.train.trainer import DistillSettings, resolve_trainer_cls

if TYPE_CHECKING:
    from pipeline.config import DistillConfig

# <output_dir>/final: the weights at the end of training, a stable path for the next stage
FINAL_DIR = "final"


def drop_dangling_last_checkpoint(output_dir: str) -> bool:
    """Remove ``<output_dir>/last-checkpoint`` when it is a link to a checkpoint that is gone; True if so.

    ms-swift points the link at each checkpoint it saves; the Trainer's rotation then deletes that
    checkpoint when ``save_total_limit`` keeps the best one instead (best at step 1,400 of 1,500: the
    link names ``checkpoint-1500``, which no longer exists). A dangling link in a DVC output fails the
    stage after training (``dvc repro``: ``No such file or directory: .../last-checkpoint``).
    """
    link = os.path.join(output_dir, "last-checkpoint")
    if os.path.islink(link) and not os.path.exists(link):
        os.unlink(link)
        return True
    return False


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
            onpolicy_batches=self._onpolicy_batches(args),
        )
        trainer.add_callback(TelemetryCallback(cfg))
        self.preemption = PreemptionCallback()
        trainer.add_callback(self.preemption)
        if teacher is not None:
            teacher.to(trainer.args.device)
        self.trainer = trainer
        return self.train(trainer)

    def _datasets(self) -> tuple[EncodedDataset, EncodedDataset | None]:
        """The train (and val) datasets, each split bound to its cache where the variant reads one,
        every bound row compared with its cache row (before step 1, not when a batch fetches it),
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
        if train_cache is not None:
            check_rows_against_cache(train_split, train_cache, self.encoder)
        if eval_cache is not None:
            check_rows_against_cache(val_split[0], eval_cache, self.encoder)
        write_report([train_split, *val_split], self.args.output_dir)
        val_rows = val_split[0].rows if val_split else []
        # live sampling needs the raw rows; on-policy batches through the cache bring their own
        on_policy = cfg.rlhf is not None and cfg.rlhf.lmbda > 0 and cfg.custom.onpolicy_cache is None
        memo = MemoBudget(int(cfg.custom.encoded_cache_mb * 2**20))  # one budget for both datasets
        train_ds = EncodedDataset(
            train_split.rows, self.encoder, train_cache, keep_rows=on_policy, memo_budget=memo
        )
        val_ds = EncodedDataset(val_rows, self.encoder, eval_cache, memo_budget=memo) if val_rows else None
        return train_ds, val_ds

    def _onpolicy_batches(self, args: Any) -> Any:
        """The student-written on-policy batches of ``custom.onpolicy_cache`` (None: live on-policy, or
        none), collated like the dataset's batches, every row checked against its cache row first."""
        cfg = self.cfg
        if cfg.custom.onpolicy_cache is None:
            return None
        from pipeline.dist import rank_world
        from pipeline.train.data import DistillCollator
        from pipeline.train.onpolicy_cache import OnPolicyBatches, onpolicy_dataset, open_onpolicy_cache

        reader = open_onpolicy_cache(cfg, self.encoder)
        self._check_cache_vocab(reader)
        ds = onpolicy_dataset(cfg, self.encoder, reader)
        for i in range(len(ds)):  # encoding-hash mismatches before step 1, not mid-run
            ds[i]
        collator = DistillCollator(self.template.data_collator)
        batch_size = args.training_args.per_device_train_batch_size
        return OnPolicyBatches(ds, collator, batch_size, cfg.train.seed, rank_world()[0])

    def _live_teacher(self) -> Any:
        """The live teacher, checked against the student, when the variant needs one for this lmbda."""
        if not needs_live_teacher(self.cfg):
            return None
        from pipeline.compat import check_pair

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
        """ms-swift's train, then the final weights; a SIGTERM'd run stops with ``TrainingStopped``
        after its checkpoint (no final weights), a full disk with one ``DiskFullError`` line."""
        out = self.args.output_dir
        try:
            result = super().train(trainer)
        except Exception as exc:
            if trainer.disk_full is not None and exc is not trainer.disk_full and is_disk_full_anywhere(exc):
                raise trainer.disk_full from exc
            raise
        drop_dangling_last_checkpoint(out)
        stop = self.preemption
        if stop.stopped_at is not None:
            ckpt = trainer.state.last_model_checkpoint or os.path.join(out, f"checkpoint-{stop.stopped_at}")
            line = stopped_line(out, str(stop.signal_name), stop.stopped_at, trainer.state.max_steps, ckpt)
            raise TrainingStopped(line)
        # Checkpoint rotation may keep the best rather than the last checkpoint; the next stage
        # wants the end-of-training weights at a fixed path.
        final = os.path.join(out, FINAL_DIR)
        try:
            trainer.save_model(final)
        except Exception as exc:
            if not is_disk_full_anywhere(exc):
                raise
            raise DiskFullError(
                f"{final}: no space left on device while writing the final weights "
                f"({first_line(exc)}); the checkpoints in {out} are kept; free space "
                "and run the same command with train.extra.resume_from_checkpoint: last"
            ) from exc
        return result

    def _check_cache_vocab(self, cache: Any) -> None:
        width = self.model.get_output_embeddings().weight.shape[0]
        if cache.vocab_size > width:
            raise CacheMismatchError(
                f"cache vocabulary {cache.vocab_size} exceeds the student's logit width {width}"
            )
