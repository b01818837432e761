"""Student head and loss fused: logits only for supervised rows, one ``[c, Vb]`` block at a time.

At a 151,936-id vocabulary the student step's memory is dominated by logits: full-vocabulary logits at
every position of a 1,800-token image row, up-cast to fp32, plus their gradient and a ``[V, H]``
weight-gradient temporary per checkpointed chunk. Here the head is applied to the supervised hidden
states only (``h [N, H]``, the state at ``j-1`` for the target at ``j``), ``c`` rows at a time, and
within a row chunk over vocabulary blocks of ``Vb`` columns:

- forward, one pass over the blocks: online log-sum-exp of the raw logits (CE) and of
  ``logits / temperature`` (divergence), the logits at the target and at the cached top-k ids, the
  online log-sum-exp OUTSIDE the top-k ids (so the student's tail ``log(1 - sum)`` is
  ``lse_outside - lse``, without cancellation, exactly as ``losses.gjsd_topk``), and the running
  argmax (token accuracy). Against live teacher logits a second pass sums the full divergence.
- the divergence itself is ``losses.gjsd_rows`` on the small ``[c, k+1]`` (or ``[c, Vb]``) log-prob
  tensors, the same core as the dense losses, so the two paths cannot drift; its derivative with
  respect to the student log-probs is taken there and saved (``[N, k+1]``, or ``[N]`` for live).
- backward (custom ``autograd.Function``): one more pass, vocabulary blocks outside and row chunks
  inside, rebuilds each ``[c, Vb]`` block, forms ``d loss / d logits`` analytically (softmax terms
  from the saved log-sum-exps), accumulates ``dh += dz @ W_b``, and sums the block's weight gradient
  over the row chunks with ``addmm_`` straight into its destination rows: the existing ``W.grad``
  when there is one (gradient accumulation; autograd then receives a zero-stride zero, so its hooks
  still fire), else one buffer of the weight's dtype that autograd installs as ``W.grad``. A bf16
  weight accumulates in one fp32 ``[Vb, H]`` block, rounded once. No ``[N, V]`` tensor, no ``[V, H]``
  temporary.

Columns ``>= real_vocab`` (padded embedding rows) take part in no softmax and get zero gradient.
Everything accumulates in fp32 (fp64 when ``h`` or the weight is fp64) whatever the weight dtype.
Under DeepSpeed ZeRO-3 the caller passes ``gather``: a context-manager factory that materialises the
(partitioned) weight; it is entered in the forward and again in the backward pass. A weight (or bias)
that has its full shape only inside ``gather`` gets its gradient written into ``.grad`` there: autograd
would accumulate a returned one after the release, against the ``[0]``-shaped partition, and fail.

Reference designs: Liger-Kernel's fused linear cross-entropy / JSD and chunked distillation base
(https://github.com/linkedin/Liger-Kernel), which also accumulate the head gradient in place; neither
accepts a cached top-k + tail target, which is what this module adds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.train import losses

DEFAULT_ROW_CHUNK = 256
DEFAULT_VOCAB_BLOCK = 8192
_NEG_INF = float("-inf")

Gather = Callable[[], contextlib.AbstractContextManager[Any]]


@dataclass
class TokenLosses:
    """Per supervised token, in the order of ``h``'s rows.

    ce: ``[N]`` fp32/fp64 cross-entropy (differentiable). kl: ``[N]`` GJSD against the teacher, or
    ``None`` without a teacher (differentiable). correct: ``[N]`` bool, argmax over the real
    vocabulary equals the target (no gradient).
    """

    ce: torch.Tensor
    kl: torch.Tensor | None
    correct: torch.Tensor


def _check_student(
    h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, real_vocab: int, bias: torch.Tensor | None
) -> None:
    """The student side's shapes and target range, each refused with the shapes it got."""
    if h.dim() != 2 or weight.dim() != 2 or h.shape[1] != weight.shape[1]:
        raise ValueError(
            f"expected h [N, H] and weight [V, H], got {tuple(h.shape)} and {tuple(weight.shape)}"
        )
    n = h.shape[0]
    if targets.shape != (n,):
        raise ValueError(f"targets must be [{n}], got {tuple(targets.shape)}")
    if not 0 < real_vocab <= weight.shape[0]:
        raise ValueError(f"real_vocab={real_vocab} must be in [1, {weight.shape[0]}] (head width)")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ValueError(f"bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    losses.check_ids(targets.unsqueeze(-1), real_vocab, name="targets")


def _checked_teacher(
    n: int,
    real_vocab: int,
    topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    teacher_logits: torch.Tensor | None,
) -> tuple[torch.Tensor, ...]:
    """The teacher tensors ``_FusedHeadLoss`` takes (``(ids, logprobs, tail)``, ``(logits,)`` or none),
    their shapes and ids checked against ``n`` rows and the real vocabulary."""
    if topk is not None and teacher_logits is not None:
        raise ValueError("pass either topk (cached teacher) or teacher_logits (live teacher), not both")
    if topk is not None:
        ids, lp, tail = topk
        if ids.dim() != 2 or ids.shape[0] != n or lp.shape != ids.shape or tail.shape != (n,):
            raise ValueError(
                f"shape mismatch: h rows {n}, topk_ids {tuple(ids.shape)}, "
                f"topk_logprobs {tuple(lp.shape)}, tail_logprobs {tuple(tail.shape)}"
            )
        if ids.dtype != torch.int64:
            raise TypeError(f"topk_ids must be int64, got {ids.dtype}")
        losses.check_ids(ids, real_vocab)
        return (ids, lp, tail)
    if teacher_logits is not None:
        if teacher_logits.dim() != 2 or teacher_logits.shape[0] != n or teacher_logits.shape[1] < real_vocab:
            raise ValueError(
                f"teacher_logits must be [{n}, >= {real_vocab}], got {tuple(teacher_logits.shape)}"
            )
        return (teacher_logits,)
    return ()


def fused_token_losses(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    real_vocab: int,
    bias: torch.Tensor | None = None,
    topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    teacher_logits: torch.Tensor | None = None,
    beta: float = 0.5,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_ROW_CHUNK,
    vocab_block: int = DEFAULT_VOCAB_BLOCK,
    gather: Gather | None = None,
) -> TokenLosses:
    """CE, GJSD and token accuracy of ``h @ weight.T (+ bias)`` without materialising ``[N, V]``.

    Args:
        h: ``[N, H]`` student hidden states at the predicting positions, any float dtype.
        weight: ``[Vw, H]`` output projection (tied or not), any float dtype; ``Vw >= real_vocab``.
        targets: ``[N]`` int64 in ``[0, real_vocab)``.
        real_vocab: ``len(tokenizer)``; columns ``>= real_vocab`` are padding, outside every softmax.
        bias: optional ``[Vw]``.
        topk: cached teacher ``(ids [N, k] int64 distinct per row, logprobs [N, k], tail [N])``,
            already normalised over the real vocabulary (see ``pipeline.cache.targets.renormalise_topk``).
        teacher_logits: ``[N, Vt]`` live teacher logits, ``Vt >= real_vocab`` (exclusive with ``topk``).
        beta: GJSD mixing (0 forward KL, 1 reverse KL), ``losses`` convention.
        temperature: divergence temperature (student ``logits / T``; live teacher too). CE uses raw logits.
        chunk_size: rows per chunk; vocab_block: vocabulary columns per block.
        gather: optional factory of a context manager that makes ``weight``/``bias`` whole (ZeRO-3).

    Returns:
        ``TokenLosses``; gradients flow to ``h``, ``weight`` and ``bias`` only (teacher tensors are
        constants and must not require grad).
    """
    losses.check_common(beta, temperature, "none", chunk_size)
    if vocab_block < 1:
        raise ValueError(f"vocab_block must be >= 1, got {vocab_block}")
    _check_student(h, weight, targets, real_vocab, bias)
    teacher = _checked_teacher(h.shape[0], real_vocab, topk, teacher_logits)
    if any(t.requires_grad for t in teacher):
        raise ValueError("teacher tensors must not require grad: the teacher is a fixed target")
    dtype = torch.float64 if torch.float64 in (h.dtype, weight.dtype) else torch.float32
    spec = _Spec(
        real_vocab, beta, temperature, chunk_size, vocab_block, dtype, gather or contextlib.nullcontext
    )
    ce, kl, correct = _FusedHeadLoss.apply(spec, h, weight, bias, targets, *teacher)
    return TokenLosses(ce=ce, kl=kl if teacher else None, correct=correct)


@dataclass(frozen=True)
class _Spec:
    real_vocab: int
    beta: float
    temperature: float
    chunk_size: int
    vocab_block: int
    dtype: torch.dtype
    gather: Gather


class _FusedHeadLoss(torch.autograd.Function):
    """``(spec, h, W, b, targets, *teacher) -> (ce [N], kl [N], correct [N])``; see the module doc."""

    @staticmethod
    def forward(
        ctx: Any,
        spec: _Spec,
        h: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor | None,
        targets: torch.Tensor,
        *teacher: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        n, dt = h.shape[0], spec.dtype
        ce = h.new_zeros(n, dtype=dt)
        kl = h.new_zeros(n, dtype=dt)
        correct = torch.zeros(n, dtype=torch.bool, device=h.device)
        saved: list[torch.Tensor] = []  # per chunk: stats needed by the backward pass
        with torch.no_grad(), spec.gather():
            for s in range(0, n, spec.chunk_size):
                rows = slice(s, s + spec.chunk_size)
                st = _chunk_forward(spec, h[rows], w, b, targets[rows], [t[rows] for t in teacher])
                ce[rows], kl[rows], correct[rows] = st.ce, st.kl, st.correct
                saved += [st.lse, st.lse_t, st.lse_aux, st.grad_logs]
        ctx.spec, ctx.has_bias, ctx.n_teacher = spec, b is not None, len(teacher)
        ctx.save_for_backward(h, w, b, targets, *teacher, *saved)
        ctx.mark_non_differentiable(correct)
        return ce, kl, correct

    @staticmethod
    def backward(ctx: Any, g_ce: torch.Tensor, g_kl: torch.Tensor, _: Any) -> tuple[Any, ...]:
        spec: _Spec = ctx.spec
        h, w, b, targets, *rest = ctx.saved_tensors
        teacher, saved = rest[: ctx.n_teacher], rest[ctx.n_teacher :]
        dt = spec.dtype
        need_h, need_w, need_b = ctx.needs_input_grad[1:4]
        outside = (w.shape, None if b is None else b.shape)  # a ZeRO-3 parameter is [0] outside gather
        # the whole pass inside gather: under ZeRO-3 the weight has its full shape only there
        with torch.no_grad(), spec.gather():
            # autograd accumulates returned gradients after gather has partitioned the parameters
            # again: a parameter materialised here gets its gradient written to .grad here instead
            install_w, install_b = w.shape != outside[0], b is not None and b.shape != outside[1]
            chunks = [
                _ChunkGrad.of(spec, h[s : s + spec.chunk_size], targets[s : s + spec.chunk_size],
                              [t[s : s + spec.chunk_size] for t in teacher], saved[4 * i : 4 * i + 4],
                              g_ce[s : s + spec.chunk_size].to(dt), g_kl[s : s + spec.chunk_size].to(dt))
                for i, s in enumerate(range(0, h.shape[0], spec.chunk_size))
            ]  # fmt: skip
            dh = torch.zeros(h.shape, dtype=dt, device=h.device) if need_h else None
            dw, in_place = _weight_grad_destination(w, install_w) if need_w else (None, False)
            db = torch.zeros(w.shape[:1], dtype=dt, device=w.device) if need_b and ctx.has_bias else None
            for v0 in _blocks(spec):
                _block_backward(spec, v0, w, b, chunks, dh, dw, db)
            full = w.shape
            if db is not None and install_b:
                db = _add_to_grad(b, db.to(b.dtype))
        if in_place:  # already added to w.grad; a zero-stride zero keeps autograd's hooks firing
            dw = torch.zeros((), dtype=w.dtype, device=w.device).expand(full)
        return (
            None,
            None if dh is None else dh.to(h.dtype),
            dw,
            None if db is None else db.to(b.dtype),
            None,
            *([None] * ctx.n_teacher),
        )


def _weight_grad_destination(w: torch.Tensor, install: bool) -> tuple[torch.Tensor, bool]:
    """Where the head gradient is accumulated block by block, and whether that is ``w.grad`` itself.

    An existing dense ``w.grad`` (gradient accumulation) is added to in place, so no ``[V, H]``
    temporary exists; otherwise a zero buffer of the weight's dtype is returned, which autograd then
    installs as ``w.grad`` without a copy. With ``install`` (a weight ``gather`` materialised, which is
    partitioned again before autograd would accumulate it) the buffer becomes ``w.grad`` here instead.
    (fp32 accumulation happens per block, see ``_block_backward``.)
    """
    g = w.grad if w.is_leaf else None
    if install and g is None:
        w.grad = torch.zeros(w.shape, dtype=w.dtype, device=w.device)
        return w.grad, True
    if (
        g is not None
        and g.layout == torch.strided
        and g.shape == w.shape
        and g.dtype == w.dtype
        and g.is_contiguous()
        # tensor hooks would see the zero placeholder
        and (install or (not torch.is_grad_enabled() and not getattr(w, "_backward_hooks", None)))
    ):
        return g, True
    return torch.zeros(w.shape, dtype=w.dtype, device=w.device), False


def _add_to_grad(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Add ``g`` into ``p.grad`` (installing it when there is none); return the zero-stride zero for autograd."""
    if p.grad is None:
        p.grad = g
    else:
        p.grad += g
    return torch.zeros((), dtype=p.dtype, device=p.device).expand(p.shape)


@dataclass
class _ChunkStats:
    ce: torch.Tensor  # [c]
    kl: torch.Tensor  # [c]
    correct: torch.Tensor  # [c] bool
    lse: torch.Tensor  # [c] logsumexp of raw logits over the real vocabulary
    lse_t: torch.Tensor  # [c] logsumexp of logits / T
    lse_aux: torch.Tensor  # [c] top-k: logsumexp of logits / T outside the ids (-inf: empty tail);
    #                        live: the teacher's logsumexp of its logits / T over the real vocabulary
    grad_logs: torch.Tensor  # [c, k+1] d kl / d student log-probs (top-k); [c] sum of them (live)


def _blocks(spec: _Spec) -> range:
    return range(0, spec.real_vocab, spec.vocab_block)


def _logits(spec: _Spec, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, v0: int) -> torch.Tensor:
    """Raw logits of one block: ``[c, Vb]`` in the compute dtype."""
    v1 = min(v0 + spec.vocab_block, spec.real_vocab)
    z = h.to(spec.dtype) @ w[v0:v1].to(spec.dtype).T
    return z if b is None else z + b[v0:v1].to(spec.dtype)


class _OnlineLSE:
    """Running ``logsumexp`` over column blocks of ``[c, *]`` tensors (``-inf`` while empty)."""

    def __init__(self, ref: torch.Tensor):
        self.m = torch.full_like(ref, _NEG_INF)
        self.s = torch.zeros_like(ref)

    def update(self, block: torch.Tensor) -> None:
        m = torch.maximum(self.m, block.max(dim=-1).values)
        safe = torch.where(torch.isneginf(m), 0.0, m)  # no -inf - -inf while everything is empty
        self.s = self.s * (self.m - safe).exp() + (block - safe[:, None]).exp().sum(dim=-1)
        self.m = m

    def value(self) -> torch.Tensor:
        safe = torch.where(torch.isneginf(self.m), 0.0, self.m)
        return safe + self.s.log()  # log(0) = -inf for an empty set


def _in_block(ids: torch.Tensor, v0: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Local column of each id and whether it falls in ``[v0, v0 + width)``."""
    local = ids - v0
    inside = (local >= 0) & (local < width)
    return local.clamp(0, width - 1), inside


def _chunk_forward(
    spec: _Spec,
    h: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    y: torch.Tensor,
    teacher: list[torch.Tensor],
) -> _ChunkStats:
    dt, temp = spec.dtype, spec.temperature
    c = h.shape[0]
    zero = torch.zeros(c, dtype=dt, device=h.device)
    lse, lse_t, lse_out = _OnlineLSE(zero), _OnlineLSE(zero), _OnlineLSE(zero)
    z_y = zero.clone()
    best = torch.full_like(zero, _NEG_INF)
    arg = torch.zeros(c, dtype=torch.int64, device=h.device)
    cached = len(teacher) == 3
    # student logits / T at the cached ids ([c, k]; empty when there is no cached teacher)
    z_ids = torch.zeros(teacher[0].shape if cached else (c, 0), dtype=dt, device=h.device)
    t_lse = _OnlineLSE(zero) if len(teacher) == 1 else None
    for v0 in _blocks(spec):
        z = _logits(spec, h, w, b, v0)
        width = z.shape[1]
        lse.update(z)
        bv, bi = z.max(dim=-1)
        better = bv > best  # strict: the first maximum wins, as torch.argmax
        best, arg = torch.where(better, bv, best), torch.where(better, bi + v0, arg)
        loc, ins = _in_block(y, v0, width)
        z_y = torch.where(ins, z.gather(1, loc[:, None]).squeeze(1), z_y)
        zt = z if temp == 1.0 else z / temp
        if temp != 1.0:
            lse_t.update(zt)
        if cached:
            loc, ins = _in_block(teacher[0], v0, width)
            z_ids = torch.where(ins, zt.gather(1, loc), z_ids)
            # outside the ids, in place (z is not read again): -inf at the block's ids, others kept
            keep = torch.where(ins, _NEG_INF, torch.inf).to(zt.dtype)
            lse_out.update(zt.scatter_reduce_(1, loc, keep, reduce="amin"))
        elif t_lse is not None:
            t_lse.update(teacher[0][:, v0 : v0 + width].to(dt) / temp)
    lse_v, lse_outv = lse.value(), lse_out.value()
    lse_tv = lse_v if temp == 1.0 else lse_t.value()
    ce = lse_v - z_y
    kl, grad_logs, aux = zero, zero, lse_outv
    if cached:
        _, t_lp, t_tail = teacher
        s_tail = torch.where(torch.isneginf(lse_outv), _NEG_INF, lse_outv - lse_tv)
        log_s = torch.cat([z_ids - lse_tv[:, None], s_tail[:, None]], dim=1)
        log_t = torch.cat([t_lp.to(dt), t_tail.to(dt)[:, None]], dim=1)
        kl, grad_logs = _gjsd_and_grad(log_t, log_s, spec.beta)
    elif t_lse is not None:
        aux = t_lse.value()
        kl, grad_logs = _live_pass(spec, h, w, b, teacher[0], lse_tv, aux)
    return _ChunkStats(ce, kl, arg == y, lse_v, lse_tv, aux, grad_logs)


def _gjsd_and_grad(
    log_t: torch.Tensor, log_s: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``losses.gjsd_rows`` per row (``[c]``) and its derivative w.r.t. ``log_s`` (``[c, C]``)."""
    with torch.enable_grad():
        leaf = log_s.detach().requires_grad_(True)
        rows = losses.gjsd_rows(log_t, leaf, beta)
        (grad,) = torch.autograd.grad(rows.sum(), leaf)
    return rows.detach(), grad


def _live_pass(
    spec: _Spec,
    h: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    t_logits: torch.Tensor,
    lse_s: torch.Tensor,
    lse_t: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-vocabulary GJSD summed block by block, and ``sum_v d kl / d log s_v`` per row."""
    kl = torch.zeros_like(lse_s)
    gsum = torch.zeros_like(lse_s)
    for v0 in _blocks(spec):
        log_s = _logits(spec, h, w, b, v0) / spec.temperature - lse_s[:, None]
        log_t = t_logits[:, v0 : v0 + log_s.shape[1]].to(spec.dtype) / spec.temperature - lse_t[:, None]
        part, grad = _gjsd_and_grad(log_t, log_s, spec.beta)
        kl += part
        gsum += grad.sum(dim=-1)
    return kl, gsum


@dataclass
class _ChunkGrad:
    """One row chunk's inputs to the backward pass, with its per-row gradient coefficients."""

    h: torch.Tensor  # [c, H] compute dtype
    y: torch.Tensor  # [c]
    teacher: list[torch.Tensor]
    lse: torch.Tensor  # [c]
    lse_t: torch.Tensor  # [c]
    lse_aux: torch.Tensor  # [c]
    g_ce: torch.Tensor  # [c]
    g_kl: torch.Tensor  # [c]
    g_top: torch.Tensor | None = None  # [c, k] top-k: d loss / d log s at the ids
    g_tail: torch.Tensor | None = None  # [c] top-k: at the tail (0 where the tail is empty)
    g_all: torch.Tensor | None = None  # [c] sum of d loss / d log s over all categories
    tail_live: torch.Tensor | None = None  # [c] bool

    @staticmethod
    def of(spec: _Spec, h: torch.Tensor, y: torch.Tensor, teacher: list[torch.Tensor],
           saved: list[torch.Tensor], g_ce: torch.Tensor, g_kl: torch.Tensor) -> _ChunkGrad:  # fmt: skip
        lse, lse_t, lse_aux, grad_logs = saved
        cg = _ChunkGrad(h.to(spec.dtype), y, teacher, lse, lse_t, lse_aux, g_ce, g_kl)
        if len(teacher) == 3:
            cg.tail_live = ~torch.isneginf(lse_aux)
            # an empty tail is a constant -inf (no gradient), as in losses.gjsd_topk
            cg.g_top = grad_logs[:, :-1] * g_kl[:, None]
            cg.g_tail = torch.where(cg.tail_live, grad_logs[:, -1], 0.0) * g_kl
            cg.g_all = cg.g_top.sum(dim=-1) + cg.g_tail
        elif teacher:
            cg.g_all = grad_logs * g_kl
        return cg


def _block_backward(spec: _Spec, v0: int, w: torch.Tensor, b: torch.Tensor | None, chunks: list[_ChunkGrad],
                    dh: torch.Tensor | None, dw: torch.Tensor | None, db: torch.Tensor | None) -> None:  # fmt: skip
    """Accumulate vocabulary block ``[v0, v0 + Vb)``'s share of ``dh`` and its rows of ``dw``/``db``.

    With ``z = logits / T``, ``p = softmax(z)``, ``g = d kl / d log s``::

        d ce / d logits_v = p_raw_v - [v = y]
        top-k:  d kl / d z_v = sum_i g_i [v = id_i] + g_tail q_v [v not in ids] - (sum_j g_j) p_v,
                q = softmax of z outside the ids
        live:   d kl / d z_v = g_v - (sum_u g_u) p_v

    The block's weight gradient is summed over the row chunks in the compute dtype (in ``dw``'s rows
    directly when ``dw`` has that dtype, else in one ``[Vb, H]`` accumulator) and written once.
    """
    dt, temp = spec.dtype, spec.temperature
    v1 = min(v0 + spec.vocab_block, spec.real_vocab)
    acc = None
    if dw is not None:
        acc = dw[v0:v1] if dw.dtype == dt else torch.zeros(v1 - v0, dw.shape[1], dtype=dt, device=dw.device)
    row = 0
    for c in chunks:
        rows = slice(row, row + c.h.shape[0])
        row += c.h.shape[0]
        dz = _block_dlogits(spec, v0, c, _logits(spec, c.h, w, b, v0), temp)
        if dh is not None:
            dh[rows] += dz @ w[v0:v1].to(dt)
        if acc is not None:
            acc.addmm_(dz.T, c.h)
        if db is not None:
            db[v0:v1] += dz.sum(dim=0)
    if dw is not None and acc is not None and dw.dtype != dt:
        dw[v0:v1] += acc.to(dw.dtype)


def _block_dlogits(spec: _Spec, v0: int, c: _ChunkGrad, z: torch.Tensor, temp: float) -> torch.Tensor:
    """``d loss / d logits`` for one row chunk and vocabulary block: ``[c, Vb]`` (see ``_block_backward``)."""
    width = z.shape[1]
    p_raw = (z - c.lse[:, None]).exp()
    dz = p_raw * c.g_ce[:, None]  # CE on raw logits
    loc, ins = _in_block(c.y, v0, width)
    dz.scatter_add_(1, loc[:, None], torch.where(ins, -c.g_ce, 0.0)[:, None])
    if not c.teacher:
        return dz
    assert c.g_all is not None
    zt = z if temp == 1.0 else z / temp
    p = p_raw if temp == 1.0 else (zt - c.lse_t[:, None]).exp()
    if len(c.teacher) == 3:
        assert c.g_top is not None and c.g_tail is not None and c.tail_live is not None
        loc, ins = _in_block(c.teacher[0], v0, width)
        lse_out = torch.where(c.tail_live, c.lse_aux, 0.0)
        q = torch.where(c.tail_live[:, None], (zt - lse_out[:, None]).exp(), 0.0)
        q.scatter_reduce_(1, loc, torch.where(ins, 0.0, torch.inf).to(q.dtype), reduce="amin")  # 0 at the ids
        dkl = q * c.g_tail[:, None] - p * c.g_all[:, None]
        dkl.scatter_add_(1, loc, torch.where(ins, c.g_top, 0.0))
    else:
        log_t = c.teacher[0][:, v0 : v0 + width].to(spec.dtype) / temp - c.lse_aux[:, None]
        _, g = _gjsd_and_grad(log_t, zt - c.lse_t[:, None], spec.beta)
        dkl = g * c.g_kl[:, None] - p * c.g_all[:, None]
    return dz + dkl / temp
