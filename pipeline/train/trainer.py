"""Trainers: ms-swift's SFT trainer subclassed for GKD against a cached or a live teacher.

Why the SFT trainer: ms-swift's ``GKDTrainer`` encodes every batch inside the training loop (~1.8x an
SFT step on the tiny models even with a negligible teacher). Here encoding and cache reads run in
dataloader workers (``pipeline.train.data``), and the step is an SFT step plus a sparse loss.

Variants (``custom.trainer_variant``, see ``resolve_trainer_cls``):

- ``sft``: cross-entropy only (``CETrainer``).
- ``gkd_cached``: dataset batches read the teacher's top-k from the cache; with probability ``lmbda``
  a step is on-policy: the student samples its own completion and the LIVE teacher scores it (the
  teacher is loaded only when ``lmbda > 0``).
- ``gkd_monitor``: the live teacher scores every batch (full distribution), with our loss/telemetry.

Loss per step: ``GJSD_beta(teacher || student)`` summed over supervised tokens, plus ``sft_alpha`` x CE
on dataset batches (never on student-sampled ones), divided by the step's supervised-token count
(``num_items_in_batch``), so gradient accumulation equals one large batch. Evaluation never runs the
live teacher: ``eval/sft_loss`` (CE) is the model-selection metric for every variant, ``eval/kl_loss``
comes from the cached eval split when there is one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from swift.trainers import Seq2SeqTrainer
from transformers import Trainer as HfTrainer

from pipeline.errors import CacheMismatchError, ConfigError
from pipeline.teacher.forward import forward_context, hidden_states, project_fp32, supervised_index
from pipeline.train import losses
from pipeline.train.data import IDS_KEY, ROWS_KEY, TEACHER_KEY

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
_DROP = {"token_acc", "eval_token_acc"}  # ms-swift's own accuracy; ours is token_accuracy


@dataclass
class DistillSettings:
    """What the loss needs, resolved from the config (temperatures kept apart by name)."""

    variant: str = "sft"
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

    uses_teacher = True
    teacher_source = "cache"

    def __init__(
        self,
        *args: Any,
        distill: DistillSettings,
        teacher_model: Any = None,
        encoder: Any = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.distill = distill
        self.teacher_model = teacher_model
        self.encoder = encoder
        self.on_policy_draws: list[tuple[int, bool]] = []  # (global_step, on_policy) per training micro-batch
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
    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        mode = "train" if model.training else "eval"
        for key in ("compute_loss_func", "loss_scale", "text_position_ids", "channel", IDS_KEY):
            inputs.pop(key, None)
        teacher = inputs.pop(TEACHER_KEY, None)
        rows = inputs.pop(ROWS_KEY, None)
        on_policy = mode == "train" and self.uses_teacher and self._draw_on_policy()
        if on_policy:
            inputs = self._on_policy_inputs(model, rows)
            teacher = None
            num_items_in_batch = None  # the sampled completions have their own token count
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        s_logits, targets = losses.supervised_logits(outputs.logits, labels)
        n_local = targets.numel()
        denom = num_items_in_batch if num_items_in_batch is not None else n_local

        ce_tok = losses.cross_entropy(s_logits, targets, reduction="none")
        correct, total = losses.token_accuracy(s_logits, targets)
        kl_tok = None
        if on_policy or (mode == "train" and self.teacher_source == "live"):
            kl_tok = self._live_kl(inputs, labels, s_logits)
        elif teacher is not None and self.uses_teacher:
            kl_tok = self._cached_kl(teacher, s_logits, targets)

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
            if total:
                self._record(mode, "token_accuracy", torch.tensor([correct.item() / total] * total))
        if kl_tok is not None:
            self._record(mode, "kl_loss", kl_tok)
        if mode == "train" and self.uses_teacher:
            self._record(mode, "live_fraction", 1.0 if on_policy else 0.0)
        return (loss, outputs) if return_outputs else loss

    def _cached_kl(
        self, teacher: dict[str, torch.Tensor], s_logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        return cached_teacher_kl(teacher, s_logits, targets, self.distill)

    def _live_kl(self, inputs: dict[str, Any], labels: torch.Tensor, s_logits: torch.Tensor) -> torch.Tensor:
        """GJSD against the live teacher's full distribution (fp32; padded rows form one bucket)."""
        if self.teacher_model is None:
            raise ConfigError(
                "a live teacher is needed (lmbda > 0 or gkd_monitor) but none was loaded; "
                "set rlhf.teacher_model"
            )
        b, j = supervised_index(labels)
        with torch.no_grad(), forward_context(self.teacher_model, None):
            h = hidden_states(self.teacher_model, {k: v for k, v in inputs.items()})
            t_logits = project_fp32(self.teacher_model, h[b, j - 1])  # up-cast, never down-cast
        return live_teacher_kl(s_logits, t_logits, self.distill)

    # ---- on-policy ---------------------------------------------------------------------------------
    def _draw_on_policy(self) -> bool:
        """Seeded per optimizer step (like ms-swift's GKD): the same draw for all its micro-batches."""
        if self.distill.lmbda <= 0:
            return False
        step = int(self.state.global_step)
        draw = random.Random(self.distill.seed + step).random() < self.distill.lmbda
        self.on_policy_draws.append((step, draw))
        return draw

    def _on_policy_inputs(self, model: Any, rows: list[Any] | None) -> dict[str, Any]:
        from pipeline.train.onpolicy import sample_completions

        if rows is None:
            raise ConfigError("on-policy training needs the raw rows in the batch (dataset keep_rows)")
        return sample_completions(self, model, rows)


def cached_teacher_kl(
    teacher: dict[str, torch.Tensor], s_logits: torch.Tensor, targets: torch.Tensor, distill: DistillSettings
) -> torch.Tensor:
    """Per-token GJSD of the student [N, V] against the batch's cached top-k + tail (float32 [N]).

    The batch's supervised targets must be the cached ones, in the same order: this is the cheap
    per-batch half of the alignment check (the encoding hash is the per-sample half).
    """
    t = {k: v.to(s_logits.device) for k, v in teacher.items()}
    if t["target_ids"].shape != targets.shape or not torch.equal(t["target_ids"], targets):
        raise CacheMismatchError(
            f"batch targets disagree with the cache ({targets.numel()} supervised tokens in the batch, "
            f"{t['target_ids'].numel()} in the cache): the collator or template changed the labels"
        )
    if t["topk_ids"].numel() and int(t["topk_ids"].max()) >= s_logits.shape[-1]:
        raise CacheMismatchError(
            f"cached id {int(t['topk_ids'].max())} is outside the student's vocabulary ({s_logits.shape[-1]})"
        )
    v = distill.real_vocab or s_logits.shape[-1]
    # the default encoding decodes values to their cell centres: compare normalised distributions
    lp, tail = losses.renormalise_topk(t["topk_logprobs"], t["tail_logprobs"])
    return losses.gjsd_topk(
        s_logits[:, :v],
        t["topk_ids"],
        lp,
        tail,
        beta=distill.beta,
        temperature=distill.loss_temperature,
        reduction="none",
    )


def live_teacher_kl(s_logits: torch.Tensor, t_logits: torch.Tensor, distill: DistillSettings) -> torch.Tensor:
    """Per-token GJSD of the student [N, Vs] against full teacher logits [N, Vt] (fp32, up-cast).

    Both sides are restricted to the tokenizer's real ids (``real_vocab``) before the softmax, exactly
    as the cache is (see ``pipeline.teacher.forward.topk_from_logits``), so the live and cached paths agree.
    """
    v = distill.real_vocab or min(s_logits.shape[-1], t_logits.shape[-1])
    return losses.gjsd_full(
        s_logits[:, :v],
        t_logits[:, :v].float(),
        beta=distill.beta,
        temperature=distill.loss_temperature,
        reduction="none",
    )


class CETrainer(_DistillTrainerBase):
    """Plain SFT (cross-entropy) with the same telemetry as the distillation variants."""

    uses_teacher = False


class CachedGKDTrainer(_DistillTrainerBase):
    """GKD against the teacher cache; the live teacher only for on-policy (lmbda) steps."""

    teacher_source = "cache"


class LiveGKDTrainer(_DistillTrainerBase):
    """GKD against the live teacher on every training batch (``gkd_monitor``)."""

    teacher_source = "live"


def resolve_trainer_cls(variant: str) -> type[_DistillTrainerBase]:
    """Trainer class for ``custom.trainer_variant``."""
    classes: dict[str, type[_DistillTrainerBase]] = {
        "sft": CETrainer,
        "gkd_cached": CachedGKDTrainer,
        "gkd_monitor": LiveGKDTrainer,
    }
    if variant not in classes:
        raise ConfigError(f"custom.trainer_variant: unknown {variant!r}; choose one of {sorted(classes)}")
    return classes[variant]
