"""Model plumbing every stage shares: where the supervised targets are, the backbone's hidden states,
the output head in fp32, and autocast that stays out of DeepSpeed's way.

Alignment is by slicing: a supervised target at position j (labels[j] != -100, j >= 1) is predicted by
the hidden state at j-1; never ``torch.roll`` (it wraps the last token into the window). The teacher's
cache forward (:mod:`pipeline.teacher.forward`), the trainers' live teacher (:mod:`pipeline.train.trainer`)
and evaluation (:mod:`pipeline.evaluate.run`) all index targets this way.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.encoding import IGNORE_INDEX

__all__ = ["deepspeed_active", "forward_context", "hidden_states", "project_fp32", "supervised_index"]


def supervised_index(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch_index, target_position) of every supervised target j >= 1, row-major. int64 [N] each."""
    mask = labels[:, 1:] != IGNORE_INDEX
    b, j = mask.nonzero(as_tuple=True)
    return b, j + 1


def deepspeed_active() -> bool:
    """True when DeepSpeed drives this process: a live HF DeepSpeed config, or accelerate launched with it.

    Reads transformers' global DeepSpeed config (set by ``TrainingArguments(deepspeed=...)``) and
    accelerate's ``ACCELERATE_USE_DEEPSPEED`` flag; tests fake either one.
    """
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes"):
        return True
    try:
        from transformers.integrations.deepspeed import deepspeed_config
    except ImportError:
        return False
    return deepspeed_config() is not None


def forward_context(
    model: torch.nn.Module, autocast_dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """Autocast around the teacher only outside DeepSpeed (DeepSpeed rejects nested autocast)."""
    if autocast_dtype is None or deepspeed_active():
        return contextlib.nullcontext()
    device_type = next(model.parameters()).device.type
    return torch.autocast(device_type=device_type, dtype=autocast_dtype)


def _backbone_and_head(model: Any) -> tuple[Any, Any]:
    head = model.get_output_embeddings()
    backbone = getattr(model, "model", None)
    if head is None or backbone is None:
        raise TypeError(f"{type(model).__name__}: expected a causal LM with .model and an output embedding")
    return backbone, head


@torch.no_grad()
def hidden_states(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Last hidden states [B, L, H] of the backbone (no lm_head, so no full-vocabulary logits)."""
    backbone, _ = _backbone_and_head(model)
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "loss_scale", "text_position_ids")}
    out = backbone(**inputs, use_cache=False)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def project_fp32(model: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Apply the output projection in fp32: float32 [N, V_teacher] from hidden states [N, H]."""
    _, head = _backbone_and_head(model)
    bias = getattr(head, "bias", None)
    return F.linear(h.float(), head.weight.float(), None if bias is None else bias.float())
