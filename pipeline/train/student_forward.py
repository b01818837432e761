"""Student forward for the fused head + loss: hidden states from the full model call, head applied here.

Hook. The student is called as a whole, ``model(**inputs, output_hidden_states=True, logits_to_keep=1)``,
and the loss reads ``outputs.hidden_states[-1]`` (transformers ties the last entry to the backbone's
normed ``last_hidden_state``); ``logits_to_keep=1`` makes the model's own head project one position per
row, ``[B, 1, V]``, instead of ``[B, L, V]``. The alternatives were rejected because:

- calling the backbone (``model.model``) ourselves skips every forward hook on the top-level module:
  ms-swift's template ``pre_forward_hook`` (for Qwen2.5-VL it turns ``pixel_values`` into
  ``inputs_embeds``; under ZeRO-3 it is re-ordered after DeepSpeed's hooks), the DDP / DeepSpeed engine
  forward and peft's forward. On a peft model ``model.model`` is not even the backbone;
- a wrapper module around the model would change what ms-swift saves, prepares and unwraps;
- patching ``forward`` is monkey-patching.

Passing ``output_hidden_states`` and ``logits_to_keep`` through ms-swift's hook is supported: its
``pre_forward_hook`` forwards both keys. The per-layer hidden states the tuple holds are the
activations autograd keeps anyway (gradient checkpointing keeps the layer inputs, the same tensors).

Head. ``output_head`` returns the weight (and bias) the model's ``get_output_embeddings()`` uses: tied
or untied, a peft ``modules_to_save`` copy (its wrapper forwards ``weight`` to the active copy), never
a LoRA-adapted head (refused: the fused loss reads ``weight`` and would ignore the adapter). Under
DeepSpeed ZeRO-3 the weight is partitioned (``ds_status`` NOT_AVAILABLE outside its module's forward);
``head_gather`` materialises it read-only (``GatheredParameters(..., modifier_rank=None)``) in the
fused forward and again in its backward. The fused backward writes the full-shape gradient into
``weight.grad`` while the weight is gathered (autograd's own accumulation would run after the release,
against the ``[0]``-shaped partition), and DeepSpeed's post-accumulate hook reduces it as for any
ZeRO-3 parameter. ``tests/train/test_zero3_cpu.py`` runs a real 2-rank ZeRO-3 step, tied and untied.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput

from pipeline.errors import ConfigError
from pipeline.train import losses
from pipeline.train.fused import DEFAULT_ROW_CHUNK, DEFAULT_VOCAB_BLOCK, TokenLosses, fused_token_losses

_NOT_FORWARDED = ("labels", "loss_scale", "text_position_ids", "channel", "compute_loss_func")


def unwrap(model: Any) -> Any:
    """Strip DDP / DeepSpeed engine wrappers (``.module``); a peft model is kept (it forwards hooks)."""
    while (
        isinstance(model, torch.nn.Module)
        and hasattr(model, "module")
        and isinstance(model.module, torch.nn.Module)
    ):
        model = model.module
    return model


def output_head(model: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight [Vw, H], bias [Vw] | None)`` of the student's output projection.

    Raises ``ConfigError`` when the head carries a LoRA adapter (``target_modules`` includes it).
    """
    head = unwrap(model).get_output_embeddings()
    if head is None:
        raise ConfigError(f"{type(unwrap(model)).__name__} has no output embedding (get_output_embeddings)")
    from peft.tuners.tuners_utils import BaseTunerLayer

    if isinstance(head, BaseTunerLayer):
        raise ConfigError(
            "train.target_modules: the output head (lm_head) carries a LoRA adapter, which the fused "
            "student loss cannot apply; leave lm_head out of the LoRA targets (or train it in full "
            "with modules_to_save)"
        )
    return head.weight, getattr(head, "bias", None)


def is_partitioned(param: torch.Tensor) -> bool:
    """True for a DeepSpeed ZeRO-3 parameter whose full data is not present on this rank right now."""
    if getattr(param, "ds_id", None) is None:
        return False
    return getattr(getattr(param, "ds_status", None), "name", None) != "AVAILABLE"


def head_gather(
    params: Sequence[torch.Tensor | None],
) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """Context-manager factory that gathers whichever of ``params`` are partitioned when it is entered.

    The decision is taken at entry (the fused loss enters it in its forward and backward passes, and a
    parameter's status differs between them); without DeepSpeed it is a ``nullcontext``.
    """

    def enter() -> contextlib.AbstractContextManager[Any]:
        todo = [p for p in params if p is not None and is_partitioned(p)]
        if not todo:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(todo, modifier_rank=None)

    return enter


def student_forward(model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, Any]:
    """Run the student; return its last hidden states ``[B, L, H]`` and the model outputs.

    ``outputs.logits`` covers only the last position of each row (``[B, 1, V]``) when the model
    accepts ``logits_to_keep``.
    """
    kwargs = {k: v for k, v in inputs.items() if k not in _NOT_FORWARDED}
    if "logits_to_keep" in kwargs:
        raise ValueError("inputs already carry logits_to_keep: the fused loss needs every hidden state")
    kwargs["output_hidden_states"] = True
    if _accepts_logits_to_keep(model):
        kwargs["logits_to_keep"] = 1
    outputs = model(**kwargs)
    return outputs.hidden_states[-1], outputs


def _accepts_logits_to_keep(model: Any) -> bool:
    base = unwrap(model)
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    return "logits_to_keep" in inspect.signature(base.forward).parameters


@dataclass
class StudentScores:
    """Per supervised target of a batch (row-major order, as the cache stores them).

    tokens: ``TokenLosses`` (``ce [N]``, ``kl [N] | None``, ``correct [N]``); targets: int64 ``[N]``;
    outputs: the model's outputs (``hidden_states`` dropped, ``logits`` last position only).
    """

    tokens: TokenLosses
    targets: torch.Tensor
    outputs: Any


def student_token_scores(
    model: Any,
    inputs: dict[str, Any],
    *,
    real_vocab: int,
    topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    teacher_logits: torch.Tensor | None = None,
    beta: float = 0.5,
    loss_temperature: float = 1.0,
    chunk_size: int = DEFAULT_ROW_CHUNK,
    vocab_block: int = DEFAULT_VOCAB_BLOCK,
) -> StudentScores:
    """Student CE, GJSD and token accuracy at every supervised target of a collated batch.

    Args:
        model: the student (possibly peft-, DDP- or DeepSpeed-wrapped).
        inputs: collated batch with ``labels [B, L]`` (``-100`` where not supervised).
        real_vocab: ``len(tokenizer)``; wider heads' padded rows are outside every softmax.
        topk: cached teacher ``(ids [N, k], logprobs [N, k], tail [N])`` for the batch's targets,
            normalised (``pipeline.cache.targets.renormalise_topk``); or ``teacher_logits [N, Vt]`` (live teacher).
        beta, loss_temperature: the divergence's settings (see ``pipeline.train.losses``).

    Differentiable when called with gradients enabled (training); under ``torch.no_grad`` it scores.
    """
    labels = inputs["labels"]
    hidden, outputs = student_forward(model, inputs)
    h, targets = losses.supervised_logits(hidden, labels)  # the state at j-1 predicts the label at j
    weight, bias = output_head(model)
    gather = head_gather([weight, bias])
    with gather():  # the shape checks need the full (ZeRO-3: gathered) weight too
        tokens = fused_token_losses(
            h,
            weight,
            targets,
            real_vocab=real_vocab,
            bias=bias,
            topk=topk,
            teacher_logits=teacher_logits,
            beta=beta,
            temperature=loss_temperature,
            chunk_size=chunk_size,
            vocab_block=vocab_block,
            gather=gather,
        )
    if isinstance(outputs, ModelOutput):  # every layer's states: nothing downstream should hold them
        outputs = type(outputs)(**{k: v for k, v in outputs.items() if k != "hidden_states"})
    return StudentScores(tokens=tokens, targets=targets, outputs=outputs)
