"""Trainers: ms-swift's SFT trainer subclassed for GKD against a cached or a live teacher.

Why the SFT trainer: ms-swift's ``GKDTrainer`` encodes every batch inside the training loop (~1.8x an
SFT step on the tiny models even with a negligible teacher). Here encoding and cache reads run in
dataloader workers (``pipeline.train.data``), and the step is an SFT step plus a sparse loss.

Variants (``custom.trainer_variant``, see ``resolve_trainer_cls``):

- ``sft``: cross-entropy only (``CETrainer``).
- ``gkd_cached``: dataset batches read the teacher's top-k from the cache; with probability ``lmbda``
  a step is on-policy: the student samples its own completion and the LIVE teacher scores it (the
  teacher is loaded only when ``lmbda > 0``), or, with ``custom.onpolicy_cache``, the step reads a
  batch of rows a student checkpoint wrote and the teacher scored in the cache stage (no teacher in
  the training process; ``pipeline.train.onpolicy_cache``).
- ``gkd_monitor``: the live teacher scores every batch (full distribution), with our loss/telemetry.

Loss per step: ``GJSD_beta(teacher || student)`` summed over supervised tokens, plus ``sft_alpha`` x CE
on dataset batches (never on student-sampled ones), divided by the step's supervised-token count
(``num_items_in_batch``), so gradient accumulation equals one large batch. Evaluation never runs the
live teacher: ``eval/sft_loss`` (CE) is the model-selection metric for every variant, ``eval/kl_loss``
comes from the cached eval split when there is one.

Student step: every variant (SFT, cached, live, on-policy, evaluation) goes through
``pipeline.train.student_forward.student_token_scores``: the whole model is called with
``output_hidden_states=True, logits_to_keep=1`` (so ms-swift's template hook, peft, DDP and DeepSpeed
all see an ordinary forward; the module docstring there says why this hook), and the head + loss run
fused at the supervised positions only (``pipeline.train.fused``): no ``[B, L, V]`` logits, one
``[c, Vb]`` fp32 block at a time, the head gradient accumulated in place.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from swift.trainers import Seq2SeqTrainer
from transformers import Trainer as HfTrainer

from pipeline.cache.targets import teacher_topk
from pipeline.errors import ConfigError
from pipeline.forward import forward_context, hidden_states, project_fp32, supervised_index
from pipeline.train import losses
from pipeline.train.data import IDS_KEY, ROWS_KEY, TEACHER_KEY
from pipeline.train.student_forward import output_head, student_token_scores
from pipeline.variant import GKD_CACHED, GKD_MONITOR, SFT, TrainerVariant

# Canonical telemetry names. ms-swift / HF log raw keys ("loss", "eval_loss"); ``log`` renames them so
# each quantity appears once under one name, in logging.jsonl, TensorBoard and DVCLive alike.
_TRAIN_RENAMES = {
    "loss": "train/loss",
    "kl_loss": "train/kl_loss",
    "sft_loss": "train/sft_loss",
    "token_accuracy": "train/token_accuracy",
    "live_fraction": "train/live_fraction",
}
_EVAL_RENAMES = {
    "eval_loss": "eval/loss",
    "eval_kl_loss": "eval/kl_loss",
    "eval_sft_loss": "eval/sft_loss",
    "eval_token_accuracy": "eval/token_accuracy",
}
# Collated keys that are not model inputs (ms-swift's, and our sample ids).
_NOT_MODEL_INPUTS = ("compute_loss_func", "loss_scale", "text_position_ids", "channel", IDS_KEY)
_DROP = {"token_acc", "eval_token_acc"}  # ms-swift's own accuracy; ours is token_accuracy


@dataclass
class DistillSettings:
    """What the loss needs, resolved from the config (temperatures kept apart by name)."""

    variant: TrainerVariant = SFT
    beta: float = 0.5
    sft_alpha: float = 0.0
    lmbda: float = 0.0
    loss_temperature: float = 1.0  # KD loss temperature (the cache was built at this temperature)
    sampling_temperature: float = 0.9  # on-policy sampling temperature only
    max_completion_length: int = 64
    real_vocab: int = 0  # len(tokenizer): ids >= this are padded embedding rows
    seed: int = 42


class _DistillTrainerBase(Seq2SeqTrainer):
    """Shared loss, telemetry and on-policy machinery. Use a concrete subclass."""

    variant: ClassVar[TrainerVariant]

    def __init__(
        self,
        *args: Any,
        distill: DistillSettings,
        teacher_model: Any = None,
        encoder: Any = None,
        onpolicy_batches: Any = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.distill = distill
        self.teacher_model = teacher_model
        self.encoder = encoder
        # custom.onpolicy_cache: on-policy steps read student-written rows and their cached teacher
        # (pipeline.train.onpolicy_cache.OnPolicyBatches) instead of sampling and a live teacher.
        self.onpolicy_batches = onpolicy_batches
        self.on_policy_draws: list[tuple[int, bool]] = []  # (global_step, on_policy) per training micro-batch
        self.disk_full: Exception | None = None  # a checkpoint write that met a full disk
        # transformers' sinks would prefix our canonical names again (train/train/loss); TelemetryCallback
        # writes TensorBoard and DVCLive instead.
        from transformers.integrations import DVCLiveCallback, TensorBoardCallback

        self.remove_callback(TensorBoardCallback)
        self.remove_callback(DVCLiveCallback)
        if teacher_model is not None:
            teacher_model.eval()
            for p in teacher_model.parameters():
                p.requires_grad_(False)

    def _get_data_collator(self, args: Any, template: Any) -> Any:
        """Every variant collates through ``DistillCollator`` (our fields popped before the template's)."""
        from pipeline.train.data import DistillCollator

        return DistillCollator(super()._get_data_collator(args, template))

    # ---- checkpoints ----------------------------------------------------------------------------------
    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """transformers' checkpoint save, with a full disk as one ``DiskFullError`` line naming
        ``output_dir`` and the last whole checkpoint (the partial one is removed)."""
        import os
        from pathlib import Path

        from pipeline.train.checkpoints import disk_full_error, is_disk_full_anywhere

        target = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        try:
            super()._save_checkpoint(model, trial)
        except Exception as exc:
            if not is_disk_full_anywhere(exc):
                raise
            # Kept on the trainer too: a write in ms-swift's own cleanup after training (its
            # logging.jsonl) may meet the same full disk and replace this exception.
            self.disk_full = disk_full_error(os.fspath(self.args.output_dir), target, exc)
            raise self.disk_full from exc

    # ---- resume ---------------------------------------------------------------------------------------
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """Load full-weight checkpoints through ``from_pretrained`` (key conversion), strictly.

        transformers 5's Trainer loads a checkpoint with ``load_state_dict(strict=False)`` and no key
        conversion, while Qwen2.5-VL checkpoints are saved under their legacy names (``visual.*``,
        ``model.layers.*``): the resume then loads nothing and only warns. Adapter (LoRA) checkpoints
        and DeepSpeed/FSDP states keep transformers' own path.
        """
        from pathlib import Path

        target = model if model is not None else self.model
        ckpt = Path(resume_from_checkpoint)
        full = any((ckpt / n).is_file() for n in ("model.safetensors", "model.safetensors.index.json"))
        if not full or hasattr(target, "peft_config") or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        unwrapped = self.accelerator.unwrap_model(target)
        dtype = next(unwrapped.parameters()).dtype
        fresh = type(unwrapped).from_pretrained(str(ckpt), dtype=dtype)
        unwrapped.load_state_dict(fresh.state_dict(), strict=True)
        del fresh
        return None

    # ---- telemetry -------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = self.custom_metrics[mode]
        logs.update(self.compute_custom_metrics(metrics, "eval_" if mode == "eval" else ""))
        renamed: dict[str, float] = {}
        for k, v in logs.items():
            if k in _DROP:
                continue
            renamed[_EVAL_RENAMES.get(k) or _TRAIN_RENAMES.get(k) or k] = v
        # Straight to transformers' Trainer.log: SwiftMixin.log would add the custom metrics a second
        # time, under their raw names.
        HfTrainer.log(self, renamed, *args, **kwargs)

    def _record(self, mode: str, name: str, value: torch.Tensor | float) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu()
        self.custom_metrics[mode][name].update(value)

    # ---- loss --------------------------------------------------------------------------------------
    def get_use_logits_to_keep(self, default_value: bool = True) -> bool:
        """Never let ms-swift compress the labels to ``logits_to_keep`` positions.

        The fused loss applies the head itself at the supervised positions of the full hidden states
        (``pipeline.train.student_forward``); ms-swift's compression would rewrite ``labels`` and
        misalign them with those states.
        """
        return False

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        """Fused head + loss at the supervised positions (``student_token_scores``), every variant.

        ``return_outputs=True`` (ms-swift's ``prediction_step``) returns the model outputs without
        hidden states; their ``logits`` cover the last position only (``[B, 1, V]``): evaluation
        metrics are recorded here (``eval/sft_loss``, ``eval/token_accuracy``, ``eval/kl_loss``).
        """
        mode = "train" if model.training else "eval"
        for key in _NOT_MODEL_INPUTS:
            inputs.pop(key, None)
        teacher = inputs.pop(TEACHER_KEY, None)
        rows = inputs.pop(ROWS_KEY, None)
        on_policy = mode == "train" and self.variant.distils and self._draw_on_policy()
        if on_policy:
            inputs, teacher = self._on_policy_inputs(model, rows)
            num_items_in_batch = None  # the sampled completions have their own token count
        labels = inputs["labels"]
        topk = t_logits = None
        if (on_policy and teacher is None) or (mode == "train" and self.variant.live_every_batch):
            t_logits = self._live_teacher_logits(inputs, labels)
        elif teacher is not None and self.variant.distils:
            b, j = supervised_index(labels)
            topk = teacher_topk(teacher, labels[b, j], self.distill.real_vocab)
        scores = student_token_scores(
            model,
            inputs,
            real_vocab=self._real_vocab(model),
            topk=topk,
            teacher_logits=t_logits,
            beta=self.distill.beta,
            loss_temperature=self.distill.loss_temperature,
        )
        ce_tok, kl_tok, correct = scores.tokens.ce, scores.tokens.kl, scores.tokens.correct
        denom = num_items_in_batch if num_items_in_batch is not None else ce_tok.numel()
        if kl_tok is None:
            loss_sum = ce_tok.sum()
        else:
            loss_sum = kl_tok.sum()
            if not on_policy and self.distill.sft_alpha > 0:
                loss_sum = loss_sum + self.distill.sft_alpha * ce_tok.sum()
        loss = losses.normalise(loss_sum, denom)
        if getattr(self.args, "average_tokens_across_devices", False) and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes

        if not on_policy:
            self._record(mode, "sft_loss", ce_tok)
            if correct.numel():
                self._record(mode, "token_accuracy", correct.float())
        if kl_tok is not None:
            self._record(mode, "kl_loss", kl_tok)
        if mode == "train" and self.variant.distils:
            self._record(mode, "live_fraction", 1.0 if on_policy else 0.0)
        return (loss, scores.outputs) if return_outputs else loss

    def _real_vocab(self, model: Any) -> int:
        return self.distill.real_vocab or int(output_head(model)[0].shape[0])

    def _live_teacher_logits(self, inputs: dict[str, Any], labels: torch.Tensor) -> torch.Tensor:
        """The live teacher's fp32 logits ``[N, Vt]`` at the batch's supervised targets (no grad)."""
        if self.teacher_model is None:
            raise ConfigError(
                "a live teacher is needed (lmbda > 0 or gkd_monitor) but none was loaded; "
                "set rlhf.teacher_model"
            )
        b, j = supervised_index(labels)
        with torch.no_grad(), forward_context(self.teacher_model, None):
            h = hidden_states(self.teacher_model, {k: v for k, v in inputs.items()})
            return project_fp32(self.teacher_model, h[b, j - 1])  # up-cast, never down-cast

    # ---- on-policy ---------------------------------------------------------------------------------
    def _draw_on_policy(self) -> bool:
        """Seeded per optimizer step (like ms-swift's GKD): the same draw for all its micro-batches."""
        if self.distill.lmbda <= 0:
            return False
        step = int(self.state.global_step)
        draw = random.Random(self.distill.seed + step).random() < self.distill.lmbda
        self.on_policy_draws.append((step, draw))
        return draw

    def _on_policy_inputs(self, model: Any, rows: list[Any] | None) -> tuple[dict[str, Any], Any]:
        """An on-policy step's ``(inputs, cached teacher targets or None)``: the next student-written
        batch of ``custom.onpolicy_cache`` with its targets, or the student's own samples now (the
        live teacher then scores them)."""
        if self.onpolicy_batches is not None:
            batch = self.onpolicy_batches.next(self.args.device)
            for key in (*_NOT_MODEL_INPUTS, ROWS_KEY):
                batch.pop(key, None)
            return batch, batch.pop(TEACHER_KEY)
        from pipeline.train.onpolicy import sample_completions

        if rows is None:
            raise ConfigError("on-policy training needs the raw rows in the batch (dataset keep_rows)")
        return sample_completions(self, model, rows), None


class CETrainer(_DistillTrainerBase):
    """Plain SFT (cross-entropy) with the same telemetry as the distillation variants."""

    variant = SFT


class CachedGKDTrainer(_DistillTrainerBase):
    """GKD against the teacher cache; the live teacher only for on-policy (lmbda) steps."""

    variant = GKD_CACHED


class LiveGKDTrainer(_DistillTrainerBase):
    """GKD against the live teacher on every training batch (``gkd_monitor``)."""

    variant = GKD_MONITOR


def resolve_trainer_cls(variant: TrainerVariant) -> type[_DistillTrainerBase]:
    """Trainer class for ``variant`` (``custom.variant``)."""
    return next(c for c in (CETrainer, CachedGKDTrainer, LiveGKDTrainer) if c.variant == variant)
