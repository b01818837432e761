"""Distillation losses: pure functions of tensors (imports only torch).

Alignment. ``supervised_logits`` pairs the logits at position ``j-1`` with the label at ``j`` by slicing
(``logits[:, :-1]`` against ``labels[:, 1:]``), never ``torch.roll``, which would wrap the last logits of
a row onto its first label. Rows come out in row-major order (batch, then ascending position): the
order in which the cache stores its targets.

Divergence. Generalized JSD with the TRL / ms-swift convention (Eq. 1 of
https://arxiv.org/abs/2306.13649, as in TRL's ``GKDTrainer.generalized_jsd_loss``)::

    beta = 0      KL(T || S)                                  forward KL
    beta = 1      KL(S || T)                                  reverse KL
    otherwise     beta * KL(T || M) + (1 - beta) * KL(S || M),   M = beta * T + (1 - beta) * S

The mixture form tends to 0 as beta -> 0 or 1, so the endpoints are special cases, not limits.
``gjsd_full`` compares full distributions (live teacher); ``gjsd_topk`` compares k+1 categories (the
cached teacher's top-k ids plus one tail bucket) against the student coarsened the same way. GJSD is a
sum of f-divergences, so by the data-processing inequality the coarsened value never exceeds the full
one, and the two are equal when k covers the vocabulary.

Precision. Every loss up-casts its inputs to fp32 (fp64 when an input is fp64) and never down-casts.
Large N is processed in chunks of rows; when gradients are needed each chunk is recomputed in the
backward pass (``torch.utils.checkpoint``), so the fp32 intermediates of only one chunk are alive at a
time. Chunking never changes the result.

Normalisation. The losses return per-token values (``reduction="none"``) or their SUM, never a mean.
The trainer divides by the number of supervised tokens in the whole optimizer step::

    step_tokens = sum(num_supervised_tokens(mb.labels) for mb in step_micro_batches)
    for mb in step_micro_batches:
        loss = normalise(kl_sum(mb) + sft_alpha * ce_sum(mb), step_tokens)
        loss.backward()

Dividing every micro-batch sum by the step's total (not by its own count) makes gradient accumulation
equal one large batch, whatever the micro-batches' token counts. Under data parallelism DDP averages
gradients over ranks: pass the token count summed over ranks and multiply the result by the world size
(what transformers' ``average_tokens_across_devices`` does). ``normalise`` returns 0 with zero gradients
when the step has no supervised token.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

# pipeline.encoding.IGNORE_INDEX, restated: this module imports only torch (tests/train/test_losses.py
# holds the two equal).
IGNORE_INDEX = -100
DEFAULT_CHUNK_SIZE = 512

Reduction = Literal["sum", "none"]
_NEG_INF = float("-inf")


def supervised_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Select the logits that predict each supervised target, by slicing.

    Args:
        logits: ``[B, L, V]``, any float dtype (kept; nothing is up-cast here).
        labels: ``[B, L]`` int64, ``-100`` where not supervised.

    Returns:
        ``(logits[:, :-1][mask] [N, V], labels[:, 1:][mask] [N] int64)`` with
        ``mask = labels[:, 1:] != -100``, rows in row-major order. ``labels[:, 0]`` is never a target
        and the last position's logits never predict anything.
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"expected logits [B, L, V] and labels [B, L], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return logits[:, :-1][mask], targets[mask]


def num_supervised_tokens(labels: torch.Tensor) -> torch.Tensor:
    """Count the targets ``supervised_logits`` would return: ``labels [B, L]`` -> 0-dim int64 tensor."""
    return (labels[:, 1:] != IGNORE_INDEX).sum()


def normalise(loss_sum: torch.Tensor, num_tokens: int | torch.Tensor) -> torch.Tensor:
    """Divide a summed loss by the optimizer step's supervised-token count.

    Args:
        loss_sum: 0-dim float tensor, a sum over this micro-batch's tokens.
        num_tokens: supervised tokens in the whole optimizer step (int, or 0-dim integer tensor to
            avoid a host sync).

    Returns:
        0-dim tensor; exactly 0, with zero gradients, when ``num_tokens == 0``.
    """
    if isinstance(num_tokens, torch.Tensor):
        denom = num_tokens.clamp_min(1).to(loss_sum.dtype)
        return torch.where(num_tokens > 0, loss_sum / denom, torch.zeros_like(loss_sum))
    if num_tokens < 0:
        raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
    if num_tokens == 0:
        return loss_sum * 0.0
    return loss_sum / num_tokens


def gjsd_full(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    beta: float,
    temperature: float = 1.0,
    reduction: Reduction = "sum",
    vocab_size: int | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Generalized JSD between full student and teacher distributions (live teacher path).

    Args:
        student_logits: ``[N, Vs]``, any float dtype; up-cast to fp32 (fp64 stays fp64).
        teacher_logits: ``[N, Vt]``, any float dtype; up-cast likewise.
        beta: in ``[0, 1]``; 0 forward KL, 1 reverse KL, between: generalized JSD.
        temperature: both sides use ``log_softmax(logits / temperature)``.
        reduction: ``"sum"`` (0-dim) or ``"none"`` (``[N]``).
        vocab_size: the real vocabulary (``len(tokenizer)``). Required when ``Vs != Vt``: both sides
            are cut to ``[:, :vocab_size]`` BEFORE the softmax, so padded embedding rows (never real
            targets; ~0 mass in a trained model) take part on neither side.
        chunk_size: rows per chunk, ``None`` for one chunk.

    Returns:
        fp32 (or fp64) divergences, summed or ``[N]``.
    """
    check_common(beta, temperature, reduction, chunk_size)
    if student_logits.dim() != 2 or teacher_logits.dim() != 2:
        raise ValueError("student_logits and teacher_logits must be [N, V]")
    if student_logits.shape[0] != teacher_logits.shape[0]:
        raise ValueError(
            f"row counts differ: student {student_logits.shape[0]}, teacher {teacher_logits.shape[0]}"
        )
    vs, vt = student_logits.shape[1], teacher_logits.shape[1]
    if vocab_size is not None:
        if not 0 < vocab_size <= min(vs, vt):
            raise ValueError(
                f"vocab_size={vocab_size} must be in [1, {min(vs, vt)}] (student {vs}, teacher {vt})"
            )
        student_logits, teacher_logits = student_logits[:, :vocab_size], teacher_logits[:, :vocab_size]
    elif vs != vt:
        raise ValueError(
            f"student width {vs} != teacher width {vt}; pass vocab_size=len(tokenizer) to compare the "
            "real vocabulary only"
        )
    dtype = _compute_dtype(student_logits, teacher_logits)

    def rows(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        log_s = torch.log_softmax(s.to(dtype) / temperature, dim=-1)
        log_t = torch.log_softmax(t.to(dtype) / temperature, dim=-1)
        return gjsd_rows(log_t, log_s, beta)

    return _reduce(_rowwise(rows, (student_logits, teacher_logits), chunk_size), reduction)


def _check_topk_inputs(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprobs: torch.Tensor,
) -> None:
    """``gjsd_topk``'s shapes, id dtype and id range, each refused with the shapes it got."""
    if student_logits.dim() != 2 or topk_ids.dim() != 2:
        raise ValueError(
            f"expected student_logits [N, V] and topk_ids [N, k], got "
            f"{tuple(student_logits.shape)} and {tuple(topk_ids.shape)}"
        )
    n, vocab = student_logits.shape
    if topk_ids.shape[0] != n or topk_logprobs.shape != topk_ids.shape or tail_logprobs.shape != (n,):
        raise ValueError(
            f"shape mismatch: student_logits {tuple(student_logits.shape)}, topk_ids {tuple(topk_ids.shape)}, "
            f"topk_logprobs {tuple(topk_logprobs.shape)}, tail_logprobs {tuple(tail_logprobs.shape)}"
        )
    if topk_ids.dtype != torch.int64:
        raise TypeError(f"topk_ids must be int64, got {topk_ids.dtype}")
    check_ids(topk_ids, vocab)


def gjsd_topk(
    student_logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    tail_logprobs: torch.Tensor,
    beta: float,
    temperature: float = 1.0,
    reduction: Reduction = "sum",
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Generalized JSD over k+1 categories: the cached teacher's top-k ids plus a tail bucket.

    The student is coarsened the same way: its log-probs at the teacher's ids, and its tail
    ``log(1 - sum)`` computed as ``logsumexp(logits outside the ids) - logsumexp(all logits)``, which
    does not cancel on a peaked student. Empty buckets (log-prob ``-inf``) contribute ``0 * log 0 = 0``
    with finite gradients.

    Args:
        student_logits: ``[N, V]``, any float dtype; up-cast to fp32 (fp64 stays fp64).
        topk_ids: ``[N, k]`` int64, distinct per row, each in ``[0, V)``.
        topk_logprobs: ``[N, k]`` fp32, teacher ``log_softmax(teacher_logits / temperature)`` at the ids.
        tail_logprobs: ``[N]`` fp32, teacher log-mass outside the ids; ``-inf`` for an empty tail.
        beta: in ``[0, 1]``; 0 forward KL, 1 reverse KL, between: generalized JSD.
        temperature: applied to the student only; it must equal the temperature the cache was built at.
        reduction: ``"sum"`` (0-dim) or ``"none"`` (``[N]``).
        chunk_size: rows per chunk, ``None`` for one chunk.

    Returns:
        fp32 (or fp64) divergences, summed or ``[N]``.
    """
    check_common(beta, temperature, reduction, chunk_size)
    _check_topk_inputs(student_logits, topk_ids, topk_logprobs, tail_logprobs)
    dtype = _compute_dtype(student_logits, topk_logprobs, tail_logprobs)

    def rows(s: torch.Tensor, ids: torch.Tensor, t_top: torch.Tensor, t_tail: torch.Tensor) -> torch.Tensor:
        z = s.to(dtype) / temperature
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        s_top = z.gather(-1, ids) - lse
        outside = z.scatter(-1, ids, _NEG_INF)
        # The tail is empty where every logit outside the ids is -inf (k == V, or masked logits).
        # logsumexp's backward on an all -inf row is exp(-inf - -inf) = NaN; feed it zeros there.
        empty = torch.isneginf(outside).all(dim=-1, keepdim=True)
        lse_out = torch.logsumexp(torch.where(empty, 0.0, outside), dim=-1, keepdim=True)
        s_tail = torch.where(empty, _NEG_INF, lse_out - lse)
        log_s = torch.cat([s_top, s_tail], dim=-1)
        log_t = torch.cat([t_top.to(dtype), t_tail.to(dtype).unsqueeze(-1)], dim=-1)
        return gjsd_rows(log_t, log_s, beta)

    per_row = _rowwise(rows, (student_logits, topk_ids, topk_logprobs, tail_logprobs), chunk_size)
    return _reduce(per_row, reduction)


def cross_entropy(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    reduction: Reduction = "sum",
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Cross-entropy of supervised targets (no ignore index: ``supervised_logits`` already dropped them).

    Args:
        student_logits: ``[N, V]``, any float dtype; up-cast to fp32 (fp64 stays fp64).
        targets: ``[N]`` int64 in ``[0, V)``.
        reduction: ``"sum"`` (0-dim) or ``"none"`` (``[N]``).
        chunk_size: rows per chunk, ``None`` for one chunk.

    Returns:
        fp32 (or fp64) negative log-likelihoods, summed or ``[N]``.
    """
    _check_reduction_and_chunk(reduction, chunk_size)
    if student_logits.dim() != 2 or targets.shape != student_logits.shape[:1]:
        raise ValueError(
            f"expected student_logits [N, V] and targets [N], got "
            f"{tuple(student_logits.shape)} and {tuple(targets.shape)}"
        )
    check_ids(targets.unsqueeze(-1), student_logits.shape[1], name="targets")
    dtype = _compute_dtype(student_logits)

    def rows(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(s.to(dtype), y, reduction="none")

    return _reduce(_rowwise(rows, (student_logits, targets), chunk_size), reduction)


@torch.no_grad()
def token_accuracy(student_logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Count targets the student ranks first.

    Args:
        student_logits: ``[N, V]``, any float dtype. Not up-cast: up-casting is exact, so the argmax
            is the same and the fp32 copy would only cost memory.
        targets: ``[N]`` int64.

    Returns:
        ``(correct, total)``: 0-dim int64 tensor (no host sync) and ``N``.
    """
    if student_logits.dim() != 2 or targets.shape != student_logits.shape[:1]:
        raise ValueError(
            f"expected student_logits [N, V] and targets [N], got "
            f"{tuple(student_logits.shape)} and {tuple(targets.shape)}"
        )
    correct = (student_logits.argmax(dim=-1) == targets).sum()
    return correct, targets.numel()


# --------------------------------------------------------------------------- internals


def gjsd_rows(log_t: torch.Tensor, log_s: torch.Tensor, beta: float) -> torch.Tensor:
    """``[n, C]`` teacher and student log-probs over the same categories -> ``[n]`` divergences."""
    if beta == 0.0:
        return _kl_rows(log_t, log_s)
    if beta == 1.0:
        return _kl_rows(log_s, log_t)
    # log M by logaddexp in log space. Where both sides are empty, M is empty too and no term uses it;
    # feed finite zeros there so logaddexp's backward never sees -inf - -inf.
    live = (log_t > _NEG_INF) | (log_s > _NEG_INF)
    lt = torch.where(live, log_t, 0.0)
    ls = torch.where(live, log_s, 0.0)
    log_m = torch.logaddexp(lt + math.log(beta), ls + math.log1p(-beta))
    return beta * _kl_rows(log_t, log_m) + (1.0 - beta) * _kl_rows(log_s, log_m)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_c p_c (log p_c - log q_c)`` over the last dim with ``0 * log(0 / q) = 0``.

    ``log p`` is replaced by a finite value where ``p = 0`` BEFORE the arithmetic (masking only the
    result is not enough: ``exp(-inf) * (-inf - log q)`` is NaN, and its backward would leak NaN
    into ``log p``'s gradient). ``p > 0 = q`` gives ``+inf``, the true value.
    """
    pos = log_p > _NEG_INF
    lp = torch.where(pos, log_p, 0.0)
    return torch.where(pos, lp.exp() * (lp - log_q), 0.0).sum(dim=-1)


def _rowwise(
    fn: Callable[..., torch.Tensor], row_tensors: Sequence[torch.Tensor], chunk_size: int | None
) -> torch.Tensor:
    """Apply ``fn`` (row tensors -> ``[n]``) chunk by chunk of rows; concatenate to ``[N]``.

    With gradients, each chunk is checkpointed: only its inputs (views of the caller's tensors) are
    kept, and its fp32 intermediates are rebuilt one chunk at a time in the backward pass.
    ``torch.split`` gives a single backward node that assembles the input gradient once.
    """
    n = row_tensors[0].shape[0]
    if chunk_size is None or n <= chunk_size:
        return fn(*row_tensors)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in row_tensors)
    outs = []
    for piece in zip(*(torch.split(t, chunk_size) for t in row_tensors), strict=True):
        outs.append(checkpoint(fn, *piece, use_reentrant=False) if needs_grad else fn(*piece))
    return torch.cat(outs)


def _reduce(per_row: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    # An empty sum is 0 and still attached to the graph, so backward() yields zero gradients.
    return per_row.sum() if reduction == "sum" else per_row


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_ids(ids: torch.Tensor, vocab: int, name: str = "topk_ids") -> None:
    """Raise unless every id is in ``[0, vocab)`` and ids are distinct within a row (one host sync)."""
    if ids.numel() == 0:
        return
    ordered = ids.sort(dim=-1).values
    dup = (ordered[:, 1:] == ordered[:, :-1]).any()
    if bool((ordered[:, 0] >= 0).all() & (ordered[:, -1] < vocab).all() & ~dup):
        return
    lo, hi = int(ordered[:, 0].min()), int(ordered[:, -1].max())
    if hi >= vocab:
        raise ValueError(f"{name}: max id {hi} is outside the student's vocabulary width V={vocab}")
    if lo < 0:
        raise ValueError(f"{name}: negative id {lo}")
    raise ValueError(f"{name}: a row repeats an id; top-k ids must be distinct")


def _check_reduction_and_chunk(reduction: str, chunk_size: int | None) -> None:
    if reduction not in ("sum", "none"):
        raise ValueError(f"reduction must be 'sum' or 'none', got {reduction!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")


def check_common(beta: float, temperature: float, reduction: str, chunk_size: int | None) -> None:
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if not (math.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    _check_reduction_and_chunk(reduction, chunk_size)
