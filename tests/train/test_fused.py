"""The fused head + loss equals the dense path (head on every row, then ``pipeline.train.losses``)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from pipeline.train import losses
from pipeline.train.fused import fused_token_losses


def _problem(
    n: int = 13, h: int = 6, vw: int = 40, real: int = 37, k: int = 5, dtype: torch.dtype = torch.float64,
    bias: bool = True, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Random student rows, head (padded width ``vw``), targets, and a cached top-k + tail teacher."""
    g = torch.Generator().manual_seed(seed)
    hid = torch.randn(n, h, generator=g, dtype=dtype)
    w = torch.randn(vw, h, generator=g, dtype=dtype)
    b = torch.randn(vw, generator=g, dtype=dtype) if bias else None
    y = torch.randint(0, real, (n,), generator=g)
    t_logits = 2.0 * torch.randn(n, vw + 3, generator=g, dtype=torch.float64)
    t_log = torch.log_softmax(t_logits[:, :real], dim=-1)
    lp, ids = t_log.topk(k, dim=-1)
    tail = torch.logsumexp(t_log.scatter(1, ids, -math.inf), dim=-1)
    return dict(h=hid, w=w, b=b, y=y, ids=ids, lp=lp.float(), tail=tail.float(), t_logits=t_logits, real=real)


def _dense(p: dict[str, Any], h: torch.Tensor, w: torch.Tensor, b: Any, beta: float, temp: float,
           alpha: float, teacher: str) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Today's path: full logits, cut to the real vocabulary, ``losses`` functions."""
    logits = torch.nn.functional.linear(h, w, b)[:, : p["real"]]
    ce = losses.cross_entropy(logits, p["y"], reduction="none", chunk_size=4)
    if teacher == "topk":
        kl = losses.gjsd_topk(
            logits, p["ids"], p["lp"], p["tail"], beta, temp, reduction="none", chunk_size=4
        )
    elif teacher == "live":
        kl = losses.gjsd_full(logits, p["t_logits"][:, : p["real"]], beta, temp, reduction="none")
    else:
        kl = torch.zeros_like(ce)
    return kl.sum() + alpha * ce.sum(), ce


def _fused(p: dict[str, Any], h: torch.Tensor, w: torch.Tensor, b: Any, beta: float, temp: float,
           alpha: float, teacher: str, chunk: int = 4, block: int = 7) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    out = fused_token_losses(
        h, w, p["y"], real_vocab=p["real"], bias=b, beta=beta, temperature=temp, chunk_size=chunk,
        vocab_block=block,
        topk=(p["ids"], p["lp"], p["tail"]) if teacher == "topk" else None,
        teacher_logits=p["t_logits"] if teacher == "live" else None,
    )  # fmt: skip
    kl = out.kl if out.kl is not None else torch.zeros_like(out.ce)
    return kl.sum() + alpha * out.ce.sum(), out.ce


def _grads(fn: Any, p: dict[str, Any], **kw: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
    leaves = [t.detach().clone().requires_grad_(True) for t in (p["h"], p["w"], p["b"])]
    loss, _ = fn(p, *leaves, **kw)
    loss.backward()
    return loss.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("teacher", ["topk", "live", "none"])
@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_loss_and_grads_equal_dense(teacher: str, beta: float, dtype: torch.dtype, tol: float) -> None:
    p = _problem(dtype=dtype)
    for temp, alpha, chunk, block in ((1.0, 0.0, 4, 7), (0.7, 0.3, 13, 40), (2.0, 1.0, 5, 3)):
        kw = dict(beta=beta, temp=temp, alpha=alpha, teacher=teacher)
        ld, gd = _grads(_dense, p, **kw)
        lf, gf = _grads(_fused, p, chunk=chunk, block=block, **kw)
        assert abs(float(lf - ld)) <= tol * abs(float(ld)) + 1e-12, (temp, float(lf), float(ld))
        for a, b_ in zip(gf, gd, strict=True):
            assert float((a - b_).norm()) <= tol * float(b_.norm()) + 1e-12, (temp, chunk, block)


def test_padded_columns_get_no_mass_and_no_gradient() -> None:
    p = _problem()
    w = p["w"].clone()
    w[p["real"] :] *= 100.0  # huge padded logits would dominate any softmax that saw them
    leaf = w.requires_grad_(True)
    out = fused_token_losses(p["h"], leaf, p["y"], real_vocab=p["real"], topk=(p["ids"], p["lp"], p["tail"]))
    (out.ce.sum() + out.kl.sum()).backward()
    assert leaf.grad[p["real"] :].abs().max() == 0
    dense = losses.cross_entropy(p["h"] @ w.detach()[: p["real"]].T, p["y"], reduction="none")
    torch.testing.assert_close(out.ce.detach(), dense, rtol=1e-10, atol=0)


def test_token_accuracy_matches_argmax_over_real_ids() -> None:
    p = _problem(n=40, real=9, vw=12)
    logits = (p["h"] @ p["w"].T + p["b"])[:, : p["real"]]
    y = logits.argmax(-1).clone()
    y[::3] = (y[::3] + 1) % p["real"]  # a third of them wrong
    out = fused_token_losses(
        p["h"], p["w"], y, real_vocab=p["real"], bias=p["b"], vocab_block=4, chunk_size=7
    )
    assert torch.equal(out.correct, logits.argmax(-1) == y)
    assert 0 < int(out.correct.sum()) < 40


def test_all_masked_batch_is_zero_with_zero_grads() -> None:
    p = _problem(n=0)
    h, w = p["h"].requires_grad_(True), p["w"].requires_grad_(True)
    out = fused_token_losses(
        h, w, p["y"], real_vocab=p["real"], topk=(p["ids"], p["lp"], p["tail"]), chunk_size=4
    )
    loss = losses.normalise(out.kl.sum() + 0.5 * out.ce.sum(), 0)
    loss.backward()
    assert float(loss) == 0.0 and out.correct.numel() == 0
    assert w.grad is not None and w.grad.abs().max() == 0 and not w.grad.isnan().any()


def test_empty_tail_when_topk_covers_the_vocabulary() -> None:
    """k == real vocabulary: the tail is empty on both sides; values and gradients stay finite."""
    p = _problem(real=6, vw=8, k=6)
    for beta in (0.0, 0.5, 1.0):
        ld, gd = _grads(_dense, p, beta=beta, temp=1.0, alpha=0.2, teacher="topk")
        lf, gf = _grads(_fused, p, beta=beta, temp=1.0, alpha=0.2, teacher="topk", block=4)
        assert math.isfinite(float(lf)) and abs(float(lf - ld)) <= 1e-10 * abs(float(ld))
        for a, b_ in zip(gf, gd, strict=True):
            assert torch.isfinite(a).all() and float((a - b_).norm()) <= 1e-10 * float(b_.norm()) + 1e-12


def test_bf16_weight_accumulates_in_fp32_and_returns_weight_dtype() -> None:
    p = _problem(dtype=torch.float32, bias=False)
    h = p["h"].to(torch.bfloat16).requires_grad_(True)
    w = p["w"].to(torch.bfloat16).requires_grad_(True)
    out = fused_token_losses(h, w, p["y"], real_vocab=p["real"], topk=(p["ids"], p["lp"], p["tail"]))
    assert out.ce.dtype == torch.float32 and out.kl.dtype == torch.float32
    (out.ce.sum() + out.kl.sum()).backward()
    assert w.grad.dtype == torch.bfloat16 and h.grad.dtype == torch.bfloat16
    ref = losses.cross_entropy(
        h.detach().float() @ w.detach().float()[: p["real"]].T, p["y"], reduction="none"
    )
    torch.testing.assert_close(out.ce.detach(), ref, rtol=1e-5, atol=1e-5)


def test_tied_head_gradient_adds_to_the_embedding_gradient() -> None:
    """A tied head: the same weight feeds the embedding lookup and the fused head."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(20, 5).double()
    ids = torch.randint(0, 20, (2, 7))
    labels = torch.randint(0, 18, (2, 7))
    labels[0, :3] = -100

    def run(fused: bool) -> torch.Tensor:
        emb.zero_grad()
        hid = torch.tanh(emb(ids))  # [B, L, H], a stand-in for the backbone
        if fused:
            h, y = losses.supervised_logits(hid, labels)  # works on any [B, L, *] tensor
            out = fused_token_losses(h, emb.weight, y, real_vocab=18, chunk_size=3, vocab_block=5)
            loss = out.ce.sum()
        else:
            s, y = losses.supervised_logits(hid @ emb.weight.T, labels)
            loss = losses.cross_entropy(s[:, :18], y)
        loss.backward()
        return emb.weight.grad.clone()

    torch.testing.assert_close(run(True), run(False), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("teacher", ["topk", "live"])
def test_gradcheck_fp64(teacher: str) -> None:
    p = _problem(n=5, h=3, vw=9, real=8, k=3)
    kw: dict[str, Any] = (
        {"topk": (p["ids"], p["lp"], p["tail"])} if teacher == "topk" else {"teacher_logits": p["t_logits"]}
    )

    def f(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = fused_token_losses(
            h, w, p["y"], real_vocab=p["real"], bias=b, beta=0.5, temperature=1.5, chunk_size=2,
            vocab_block=3, **kw,
        )  # fmt: skip
        return out.ce, out.kl

    leaves = tuple(t.clone().requires_grad_(True) for t in (p["h"], p["w"], p["b"]))
    assert torch.autograd.gradcheck(f, leaves)


def test_bad_inputs_are_refused() -> None:
    p = _problem()
    with pytest.raises(ValueError, match="real_vocab"):
        fused_token_losses(p["h"], p["w"], p["y"], real_vocab=p["w"].shape[0] + 1)
    bad = p["ids"].clone()
    bad[0, 0] = p["real"]  # a padded row is never a cached id
    with pytest.raises(ValueError, match="outside"):
        fused_token_losses(p["h"], p["w"], p["y"], real_vocab=p["real"], topk=(bad, p["lp"], p["tail"]))
    with pytest.raises(ValueError, match="not both"):
        fused_token_losses(
            p["h"], p["w"], p["y"], real_vocab=p["real"], topk=(p["ids"], p["lp"], p["tail"]),
            teacher_logits=p["t_logits"],
        )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_gradient_accumulation_adds_into_the_existing_grad(dtype: torch.dtype) -> None:
    """A second micro-batch adds to ``w.grad`` in place (no [V, H] temporary) and equals dense."""
    p = _problem(dtype=torch.float64, bias=False)
    topk = (p["ids"], p["lp"], p["tail"])
    w = p["w"].detach().to(dtype).clone().requires_grad_(True)
    for _ in range(2):
        out = fused_token_losses(p["h"], w, p["y"], real_vocab=p["real"], topk=topk, vocab_block=8)
        (out.kl.sum() + out.ce.sum()).backward()
    ref = p["w"].detach().to(dtype).double().clone().requires_grad_(True)
    for _ in range(2):
        logits = (p["h"] @ ref.T)[:, : p["real"]]
        (losses.gjsd_topk(logits, *topk, beta=0.5) + losses.cross_entropy(logits, p["y"])).backward()
    tol = 1e-10 if dtype == torch.float64 else 2e-2
    assert float((w.grad.double() - ref.grad).norm()) <= tol * float(ref.grad.norm())
    hooked = (
        p["w"].detach().clone().requires_grad_(True)
    )  # with a tensor hook: the gradient is returned whole
    seen: list[torch.Tensor] = []
    hooked.register_hook(lambda g: seen.append(g.clone()))
    for _ in range(2):
        out = fused_token_losses(p["h"], hooked, p["y"], real_vocab=p["real"], topk=topk)
        (out.kl.sum() + out.ce.sum()).backward()
    torch.testing.assert_close(seen[1], seen[0])
    if dtype == torch.float64:
        torch.testing.assert_close(hooked.grad, ref.grad, rtol=1e-10, atol=1e-12)
