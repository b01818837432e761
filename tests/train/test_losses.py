"""Tests for pipeline.train.losses: float64 brute force, gradcheck, and the properties the trainer relies on."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.train.losses import (
    cross_entropy,
    gjsd_full,
    gjsd_topk,
    normalise,
    num_supervised_tokens,
    supervised_logits,
    token_accuracy,
)

F64 = torch.float64
NEG_INF = float("-inf")
BETAS = (0.0, 0.1, 0.3, 0.5, 0.9, 1.0)


# ----------------------------------------------------------------- brute-force references (pure Python)


def _softmax(row: list[float], temperature: float) -> list[float]:
    z = [x / temperature for x in row]
    m = max(z)
    e = [math.exp(x - m) for x in z]
    total = sum(e)
    return [x / total for x in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0.0)


def _gjsd(t: list[float], s: list[float], beta: float) -> float:
    if beta == 0.0:
        return _kl(t, s)
    if beta == 1.0:
        return _kl(s, t)
    m = [beta * ti + (1.0 - beta) * si for ti, si in zip(t, s, strict=True)]
    return beta * _kl(t, m) + (1.0 - beta) * _kl(s, m)


def ref_full(student: torch.Tensor, teacher: torch.Tensor, beta: float, temperature: float) -> list[float]:
    return [
        _gjsd(_softmax(t, temperature), _softmax(s, temperature), beta)
        for s, t in zip(student.tolist(), teacher.tolist(), strict=True)
    ]


def ref_topk(
    student: torch.Tensor,
    ids: torch.Tensor,
    t_top: torch.Tensor,
    t_tail: torch.Tensor,
    beta: float,
    temperature: float,
) -> list[float]:
    out = []
    for s_row, id_row, lp_row, tail in zip(
        student.tolist(), ids.tolist(), t_top.tolist(), t_tail.tolist(), strict=True
    ):
        s_probs = _softmax(s_row, temperature)
        s_coarse = [s_probs[i] for i in id_row] + [sum(p for v, p in enumerate(s_probs) if v not in id_row)]
        t_coarse = [math.exp(x) for x in lp_row] + [math.exp(tail)]
        out.append(_gjsd(t_coarse, s_coarse, beta))
    return out


# ----------------------------------------------------------------- helpers


def teacher_topk(
    teacher: torch.Tensor, k: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the cache stores: top-k ids, their logprobs, and the stable tail logprob."""
    z = teacher / temperature
    log_t = torch.log_softmax(z, dim=-1)
    ids = log_t.topk(k, dim=-1).indices
    outside = z.scatter(-1, ids, NEG_INF)
    tail = torch.logsumexp(outside, dim=-1) - torch.logsumexp(z, dim=-1)
    return ids, log_t.gather(-1, ids), tail


def rel_close(a: torch.Tensor, b: torch.Tensor, rtol: float) -> bool:
    return bool(((a - b).abs() <= rtol * b.abs().clamp_min(1e-300)).all())


# ----------------------------------------------------------------- brute force


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gjsd_full_matches_brute_force(beta: float, temperature: float) -> None:
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(6, 9, generator=g, dtype=F64) * 2, torch.randn(6, 9, generator=g, dtype=F64) * 2
    got = gjsd_full(s, t, beta, temperature, reduction="none")
    assert got.dtype == F64 and got.shape == (6,)
    torch.testing.assert_close(
        got, torch.tensor(ref_full(s, t, beta, temperature), dtype=F64), rtol=1e-12, atol=1e-14
    )
    torch.testing.assert_close(gjsd_full(s, t, beta, temperature), got.sum(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gjsd_topk_matches_brute_force(beta: float, k: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(5, 9, generator=g, dtype=F64) * 2, torch.randn(5, 9, generator=g, dtype=F64) * 2
    ids, top, tail = teacher_topk(t, k, temperature)
    got = gjsd_topk(s, ids, top, tail, beta, temperature, reduction="none")
    want = torch.tensor(ref_topk(s, ids, top, tail, beta, temperature), dtype=F64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------- gradcheck


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("chunk_size", [None, 2])
def test_gradcheck_full(beta: float, chunk_size: int | None) -> None:
    g = torch.Generator().manual_seed(3)
    s = torch.randn(5, 7, generator=g, dtype=F64, requires_grad=True)
    t = torch.randn(5, 7, generator=g, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gjsd_full(a, b, beta, 1.5, chunk_size=chunk_size), (s, t))


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("chunk_size", [None, 2])
@pytest.mark.parametrize("k", [1, 4, 7])
def test_gradcheck_topk(beta: float, chunk_size: int | None, k: int) -> None:
    g = torch.Generator().manual_seed(4)
    s = torch.randn(5, 7, generator=g, dtype=F64, requires_grad=True)
    ids, top, tail = teacher_topk(torch.randn(5, 7, generator=g, dtype=F64), k)
    assert torch.autograd.gradcheck(
        lambda a: gjsd_topk(a, ids, top, tail, beta, 1.5, reduction="none", chunk_size=chunk_size), (s,)
    )


def test_gradcheck_cross_entropy() -> None:
    g = torch.Generator().manual_seed(5)
    s = torch.randn(5, 7, generator=g, dtype=F64, requires_grad=True)
    y = torch.randint(0, 7, (5,), generator=g)
    assert torch.autograd.gradcheck(lambda a: cross_entropy(a, y, chunk_size=2), (s,))


# ----------------------------------------------------------------- mathematical properties


@pytest.mark.parametrize("beta", BETAS)
def test_identical_inputs_give_zero(beta: float) -> None:
    x = torch.randn(4, 11, dtype=F64) * 3
    assert gjsd_full(x, x.clone(), beta).abs().item() < 1e-14
    ids, top, tail = teacher_topk(x, 3)
    assert gjsd_topk(x, ids, top, tail, beta).abs().item() < 1e-14


def test_endpoints_equal_kl_div() -> None:
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(4, 10, generator=g, dtype=F64), torch.randn(4, 10, generator=g, dtype=F64)
    log_s, log_t = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
    forward = F.kl_div(log_s, log_t, reduction="sum", log_target=True)  # KL(T || S)
    reverse = F.kl_div(log_t, log_s, reduction="sum", log_target=True)  # KL(S || T)
    torch.testing.assert_close(gjsd_full(s, t, 0.0), forward, rtol=1e-12, atol=0)
    torch.testing.assert_close(gjsd_full(s, t, 1.0), reverse, rtol=1e-12, atol=0)
    # Sparse with k = V: the same KLs.
    ids, top, tail = teacher_topk(t, 10)
    torch.testing.assert_close(gjsd_topk(s, ids, top, tail, 0.0), forward, rtol=1e-12, atol=0)
    torch.testing.assert_close(gjsd_topk(s, ids, top, tail, 1.0), reverse, rtol=1e-12, atol=0)


def test_endpoints_are_not_limits_of_the_mixture() -> None:
    # The mixture form tends to 0 at the ends; the endpoints are the KLs, so the function jumps there.
    s, t = torch.randn(3, 6, dtype=F64), torch.randn(3, 6, dtype=F64)
    assert gjsd_full(s, t, 1e-9).item() < 1e-6 < gjsd_full(s, t, 0.0).item()
    assert gjsd_full(s, t, 1 - 1e-9).item() < 1e-6 < gjsd_full(s, t, 1.0).item()


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_topk_with_full_vocabulary_equals_full(beta: float, temperature: float) -> None:
    g = torch.Generator().manual_seed(7)
    v = 13
    s, t = torch.randn(6, v, generator=g, dtype=F64) * 3, torch.randn(6, v, generator=g, dtype=F64) * 3
    # Ids in a shuffled order, not sorted: the categories' order must not matter.
    ids = torch.stack([torch.randperm(v, generator=g) for _ in range(6)])
    top = torch.log_softmax(t / temperature, -1).gather(-1, ids)
    tail = torch.full((6,), NEG_INF, dtype=F64)
    sparse = gjsd_topk(s, ids, top, tail, beta, temperature, reduction="none")
    full = gjsd_full(s, t, beta, temperature, reduction="none")
    assert rel_close(sparse, full, 1e-10), (sparse, full)


@pytest.mark.parametrize("beta", BETAS)
def test_topk_never_exceeds_full(beta: float) -> None:
    g = torch.Generator().manual_seed(8)
    v = 12
    for trial in range(20):
        scale = 0.5 + trial / 4
        s = torch.randn(8, v, generator=g, dtype=F64) * scale
        t = torch.randn(8, v, generator=g, dtype=F64) * scale
        full = gjsd_full(s, t, beta, reduction="none")
        for k in (1, 4, v - 1):
            ids, top, tail = teacher_topk(t, k)
            sparse = gjsd_topk(s, ids, top, tail, beta, reduction="none")
            assert bool((sparse <= full * (1 + 1e-12) + 1e-15).all()), (trial, k, sparse, full)
            assert bool((sparse >= -1e-15).all())


# ----------------------------------------------------------------- numerics and edge cases


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 1.0])
def test_empty_tail_and_zero_teacher_probs_are_finite(beta: float) -> None:
    g = torch.Generator().manual_seed(9)
    s = torch.randn(4, 6, generator=g, dtype=F64, requires_grad=True)
    t = torch.randn(4, 6, generator=g, dtype=F64)
    # k = V: both tails are empty buckets (teacher tail -inf, student tail computed as -inf).
    ids, top, _ = teacher_topk(t, 6)
    tail = torch.full((4,), NEG_INF, dtype=F64)
    loss = gjsd_topk(s, ids, top, tail, beta)
    loss.backward()
    assert s.grad is not None
    assert bool(loss.isfinite()) and bool(s.grad.isfinite().all())


@pytest.mark.parametrize("beta", [0.0, 0.3, 0.5, 0.9])
def test_teacher_probability_exactly_zero_is_finite(beta: float) -> None:
    g = torch.Generator().manual_seed(10)
    s = torch.randn(4, 6, generator=g, dtype=F64, requires_grad=True)
    t = torch.randn(4, 6, generator=g, dtype=F64)
    t[:, :2] = NEG_INF  # the teacher puts exactly zero mass on ids 0 and 1
    # k = 5: one zero-probability id inside the top-k, the other alone in the tail (tail = -inf),
    # while the student's tail bucket is not empty.
    ids, top, tail = teacher_topk(t, 5)
    assert bool(torch.isneginf(top[:, -1]).all()) and bool(torch.isneginf(tail).all())
    cases = {
        "full": (gjsd_full(s, t, beta, reduction="none"), ref_full(s.detach(), t, beta, 1.0)),
        "topk": (
            gjsd_topk(s, ids, top, tail, beta, reduction="none"),
            ref_topk(s.detach(), ids, top, tail, beta, 1.0),
        ),
    }
    for name, (loss, ref) in cases.items():
        (grad,) = torch.autograd.grad(loss.sum(), s)
        assert bool(loss.isfinite().all()) and bool(grad.isfinite().all()), name
        torch.testing.assert_close(loss, torch.tensor(ref, dtype=F64), rtol=1e-12, atol=1e-14, msg=name)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_zero_mass_on_both_sides_is_finite(beta: float) -> None:
    # Categories empty for teacher AND student (logits -inf, e.g. a masked id) contribute 0, and the
    # backward pass must not turn 0 * log 0 into NaN.
    g = torch.Generator().manual_seed(16)
    s = torch.randn(3, 6, generator=g, dtype=F64)
    t = torch.randn(3, 6, generator=g, dtype=F64)
    s[:, 0] = t[:, 0] = NEG_INF
    s.requires_grad_(True)
    full = gjsd_full(s, t, beta, reduction="none")
    (grad,) = torch.autograd.grad(full.sum(), s)
    assert bool(grad.isfinite().all())
    torch.testing.assert_close(full, torch.tensor(ref_full(s.detach(), t, beta, 1.0), dtype=F64))
    torch.testing.assert_close(full, gjsd_full(s[:, 1:], t[:, 1:], beta, reduction="none"))
    # Sparse: every id outside the top-k has student logit -inf, so the student tail is empty as well.
    ids, top, tail = teacher_topk(t, 5)
    s2 = s.detach().clone()
    s2[:, 0] = NEG_INF
    s2.requires_grad_(True)
    sparse = gjsd_topk(s2, ids, top, tail, beta, reduction="none")
    (grad2,) = torch.autograd.grad(sparse.sum(), s2)
    assert bool(sparse.isfinite().all()) and bool(grad2.isfinite().all())
    torch.testing.assert_close(sparse, full)


def test_reverse_kl_against_zero_teacher_mass_is_infinite() -> None:
    # KL(S || T) is +inf where T = 0 < S: reported honestly, not clamped.
    s = torch.zeros(1, 4, dtype=F64)
    t = torch.tensor([[0.0, 0.0, 0.0, NEG_INF]], dtype=F64)
    assert gjsd_full(s, t, 1.0).item() == math.inf
    assert math.isfinite(gjsd_full(s, t, 0.5).item())


def test_student_tail_is_stable_on_a_peaked_student() -> None:
    # fp32 student with 1 - sum(top-k probs) ~ 1e-26: 1 - sum would give 0 (log -> -inf, forward KL -> inf).
    v = 50
    s = torch.zeros(3, v)
    s[:, 0] = 60.0
    t = torch.randn(3, v, dtype=F64)
    ids = torch.zeros(3, 1, dtype=torch.long)  # one cached id: 0, where the student is peaked
    top = torch.log_softmax(t, -1)[:, :1]
    tail = torch.log1p(-top.exp()).squeeze(-1)  # fine for this unpeaked fp64 teacher
    got = gjsd_topk(s, ids, top.float(), tail.float(), 0.0, reduction="none")
    want = torch.tensor(ref_topk(s.double(), ids, top, tail, 0.0, 1.0), dtype=F64)
    assert got.dtype == torch.float32
    assert bool(got.isfinite().all())
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)


def test_temperature_is_applied_to_student() -> None:
    g = torch.Generator().manual_seed(11)
    s, t = torch.randn(4, 8, generator=g, dtype=F64) * 3, torch.randn(4, 8, generator=g, dtype=F64) * 3
    ids, top, tail = teacher_topk(t, 3, temperature=2.0)  # the cache was built at T = 2
    at_t2 = gjsd_topk(s, ids, top, tail, 0.0, temperature=2.0, reduction="none")
    torch.testing.assert_close(at_t2, torch.tensor(ref_topk(s, ids, top, tail, 0.0, 2.0), dtype=F64))
    # Equivalently: student logits pre-divided by T at temperature 1.
    torch.testing.assert_close(at_t2, gjsd_topk(s / 2.0, ids, top, tail, 0.0, reduction="none"))
    assert not torch.allclose(at_t2, gjsd_topk(s, ids, top, tail, 0.0, reduction="none"))


def test_dtypes_are_upcast_never_downcast() -> None:
    s = torch.randn(3, 8, dtype=torch.bfloat16)
    t = torch.randn(3, 8, dtype=torch.float16)
    ids, top, tail = teacher_topk(t.float(), 2)
    y = torch.randint(0, 8, (3,))
    assert gjsd_full(s, t, 0.5).dtype == torch.float32
    assert gjsd_topk(s, ids, top, tail, 0.5).dtype == torch.float32
    assert cross_entropy(s, y).dtype == torch.float32
    assert gjsd_topk(s, ids, top.double(), tail.double(), 0.5).dtype == F64
    assert gjsd_full(s.double(), t.double(), 0.5).dtype == F64
    assert cross_entropy(s.double(), y).dtype == F64
    # bf16 student: same result as its exact fp32 up-cast.
    torch.testing.assert_close(gjsd_topk(s, ids, top, tail, 0.3), gjsd_topk(s.float(), ids, top, tail, 0.3))


@pytest.mark.parametrize("chunk_size", [1, 3, 4, None])
def test_chunked_equals_unchunked(chunk_size: int | None) -> None:
    g = torch.Generator().manual_seed(12)
    s = torch.randn(10, 9, generator=g, dtype=F64, requires_grad=True)
    t = torch.randn(10, 9, generator=g, dtype=F64)
    y = torch.randint(0, 9, (10,), generator=g)
    ids, top, tail = teacher_topk(t, 3)
    losses = {
        "full": lambda c: gjsd_full(s, t, 0.3, 1.3, chunk_size=c),
        "topk": lambda c: gjsd_topk(s, ids, top, tail, 0.3, 1.3, chunk_size=c),
        "ce": lambda c: cross_entropy(s, y, chunk_size=c),
    }
    for name, fn in losses.items():
        ref = fn(10_000)
        (ref_grad,) = torch.autograd.grad(ref, s)
        got = fn(chunk_size)
        (got_grad,) = torch.autograd.grad(got, s)
        torch.testing.assert_close(got, ref, rtol=1e-13, atol=0, msg=name)
        torch.testing.assert_close(got_grad, ref_grad, rtol=1e-13, atol=1e-16, msg=name)
        with torch.no_grad():
            torch.testing.assert_close(fn(chunk_size), ref.detach(), rtol=1e-13, atol=0, msg=name)


# ----------------------------------------------------------------- alignment


def _position_logits(batch: int, length: int, vocab: int) -> torch.Tensor:
    """logits[b, i, 0] = 100*b + i, so every selected row names the position it came from."""
    logits = torch.zeros(batch, length, vocab)
    logits[:, :, 0] = 100 * torch.arange(batch)[:, None] + torch.arange(length)[None, :]
    return logits


def test_supervised_logits_alignment() -> None:
    labels = torch.tensor(
        [
            [-100, -100, 5, 6, 7],  # prompt then response; last position supervised
            [3, 4, -100, 8, -100],  # first position supervised (never a target), padding at the end
        ]
    )
    logits = _position_logits(2, 5, 10)
    rows, targets = supervised_logits(logits, labels)
    # Target j is predicted from position j-1; the first response token (labels[0, 2]) is included.
    assert targets.tolist() == [5, 6, 7, 4, 8]
    assert rows[:, 0].tolist() == [1.0, 2.0, 3.0, 100.0, 102.0]
    assert int(num_supervised_tokens(labels)) == 5
    # A roll-based alignment wraps the last logits onto the first label (and, flattened, across rows):
    # it picks up labels[1, 0] = 3 from position 4, which slicing never does.
    rolled = labels.roll(-1, dims=1)
    mask = rolled != -100
    assert rolled[mask].tolist() != targets.tolist()
    assert 4.0 not in rows[:, 0].tolist() and 104.0 not in rows[:, 0].tolist()


def test_supervised_logits_single_position_and_shape_errors() -> None:
    rows, targets = supervised_logits(torch.zeros(2, 1, 4), torch.zeros(2, 1, dtype=torch.long))
    assert rows.shape == (0, 4) and targets.shape == (0,)
    with pytest.raises(ValueError):
        supervised_logits(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))


# ----------------------------------------------------------------- normalisation


def test_all_masked_batch_gives_zero_not_nan() -> None:
    logits = torch.randn(2, 5, 7, dtype=F64, requires_grad=True)
    labels = torch.full((2, 5), -100)
    rows, targets = supervised_logits(logits, labels)
    n = num_supervised_tokens(labels)
    t = torch.zeros(0, 7, dtype=F64)
    ids, top, tail = torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3), torch.zeros(0)
    for beta in (0.0, 0.5, 1.0):
        for loss_sum in (
            gjsd_topk(rows, ids, top, tail, beta),
            gjsd_full(rows, t, beta),
            cross_entropy(rows, targets),
        ):
            for count in (n, int(n)):
                loss = normalise(loss_sum, count)
                (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
                assert loss.item() == 0.0
                assert bool(grad.isfinite().all()) and bool((grad == 0).all())
    assert token_accuracy(rows, targets)[1] == 0


def test_normalise() -> None:
    x = torch.tensor(6.0, requires_grad=True)
    assert normalise(x, 3).item() == 2.0
    assert normalise(x, torch.tensor(4)).item() == 1.5
    for zero in (0, torch.tensor(0)):
        out = normalise(x, zero)
        (grad,) = torch.autograd.grad(out, x)
        assert out.item() == 0.0 and grad.item() == 0.0
    with pytest.raises(ValueError):
        normalise(x, -1)


def test_gradient_accumulation_equals_one_large_batch() -> None:
    g = torch.Generator().manual_seed(13)
    b, length, v, k = 4, 6, 9, 3
    logits = torch.randn(b, length, v, generator=g, dtype=F64)
    teacher = torch.randn(b, length, v, generator=g, dtype=F64)
    labels = torch.randint(0, v, (b, length), generator=g)
    # Uneven supervision: micro-batch 1 (rows 0-1) has far fewer tokens than micro-batch 2.
    labels[0, :5] = -100
    labels[1, :4] = -100
    labels[2, :1] = -100

    def step_loss(lg: torch.Tensor, tch: torch.Tensor, lb: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
        rows, targets = supervised_logits(lg, lb)
        t_rows, _ = supervised_logits(tch, lb)
        ids, top, tail = teacher_topk(t_rows, k)
        return normalise(gjsd_topk(rows, ids, top, tail, 0.5) + 0.3 * cross_entropy(rows, targets), total)

    total = num_supervised_tokens(labels)
    big = logits.clone().requires_grad_(True)
    one = step_loss(big, teacher, labels, total)
    one.backward()

    micro = logits.clone().requires_grad_(True)
    acc = torch.zeros((), dtype=F64)
    for sl in (slice(0, 2), slice(2, 4)):
        part = step_loss(micro[sl], teacher[sl], labels[sl], total)
        part.backward()
        acc = acc + part.detach()
    torch.testing.assert_close(acc, one.detach(), rtol=1e-13, atol=0)
    assert big.grad is not None and micro.grad is not None
    torch.testing.assert_close(micro.grad, big.grad, rtol=1e-12, atol=1e-15)
    # Dividing each micro-batch by its own count instead would not match (the uneven split matters).
    per_mb = [
        normalise(
            cross_entropy(*supervised_logits(logits[sl], labels[sl])), num_supervised_tokens(labels[sl])
        )
        for sl in (slice(0, 2), slice(2, 4))
    ]
    whole = normalise(cross_entropy(*supervised_logits(logits, labels)), total)
    assert not torch.allclose((per_mb[0] + per_mb[1]) / 2, whole)


# ----------------------------------------------------------------- CE, accuracy, validation


def test_cross_entropy_and_token_accuracy() -> None:
    g = torch.Generator().manual_seed(14)
    s = torch.randn(7, 5, generator=g).to(torch.bfloat16)
    y = torch.randint(0, 5, (7,), generator=g)
    torch.testing.assert_close(cross_entropy(s, y), F.cross_entropy(s.float(), y, reduction="sum"))
    torch.testing.assert_close(
        cross_entropy(s, y, reduction="none"), F.cross_entropy(s.float(), y, reduction="none")
    )
    correct, total = token_accuracy(s, y)
    assert total == 7 and int(correct) == int((s.float().argmax(-1) == y).sum())
    with pytest.raises(ValueError, match="max id 5"):
        cross_entropy(s, torch.full((7,), 5))


def test_invalid_ids_raise() -> None:
    s = torch.randn(3, 6)
    top, tail = torch.full((3, 2), -1.0), torch.full((3,), -1.0)
    bad = torch.tensor([[0, 1], [2, 7], [3, 4]])
    with pytest.raises(ValueError, match=r"max id 7 .*V=6"):
        gjsd_topk(s, bad, top, tail, 0.5)
    with pytest.raises(ValueError, match="max id 6"):
        gjsd_topk(s, torch.tensor([[0, 1], [2, 6], [3, 4]]), top, tail, 0.5)
    with pytest.raises(ValueError, match="negative"):
        gjsd_topk(s, torch.tensor([[0, 1], [2, -1], [3, 4]]), top, tail, 0.5)
    with pytest.raises(ValueError, match="distinct"):
        gjsd_topk(s, torch.tensor([[0, 1], [2, 2], [3, 4]]), top, tail, 0.5)
    with pytest.raises(TypeError):
        gjsd_topk(s, torch.tensor([[0, 1], [2, 3], [3, 4]], dtype=torch.int32), top, tail, 0.5)
    with pytest.raises(ValueError, match="shape"):
        gjsd_topk(s, torch.tensor([[0, 1], [2, 3], [3, 4]]), top, tail[:2], 0.5)


def test_vocab_width_mismatch() -> None:
    g = torch.Generator().manual_seed(15)
    s = torch.randn(4, 10, generator=g, dtype=F64)
    t = torch.randn(4, 12, generator=g, dtype=F64)  # teacher with two padded embedding rows
    with pytest.raises(ValueError, match="vocab_size"):
        gjsd_full(s, t, 0.5)
    with pytest.raises(ValueError, match="vocab_size"):
        gjsd_full(s, t, 0.5, vocab_size=11)
    got = gjsd_full(s, t, 0.5, vocab_size=9)
    torch.testing.assert_close(got, gjsd_full(s[:, :9], t[:, :9], 0.5))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": -0.1}, "beta"),
        ({"beta": 1.5}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"temperature": 0.0}, "temperature"),
        ({"reduction": "mean"}, "reduction"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_argument_validation(kwargs: dict[str, object], match: str) -> None:
    s = torch.randn(2, 4)
    args: dict[str, object] = {"beta": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        gjsd_full(s, s, **args)  # type: ignore[arg-type]


def test_ignore_index_is_the_encodings() -> None:
    """``losses`` imports only torch, so it restates the label padding value; it must be the encoder's."""
    from pipeline.encoding import IGNORE_INDEX
    from pipeline.train.losses import IGNORE_INDEX as LOSS_IGNORE_INDEX

    assert LOSS_IGNORE_INDEX == IGNORE_INDEX == -100
