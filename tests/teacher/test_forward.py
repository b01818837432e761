"""Teacher top-k extraction: alignment, the stored tail, padded rows, the DeepSpeed autocast guard."""

from __future__ import annotations

import contextlib

import pytest
import torch

from pipeline import forward as F
from pipeline.teacher import forward as T


def test_supervised_index_slices_without_wrapping() -> None:
    labels = torch.tensor([[-100, -100, 5, 6, 7], [-100, 9, -100, -100, -100]])
    b, j = F.supervised_index(labels)
    # first response tokens (row 0 at j=2, row 1 at j=1) are covered; position 0 never is
    assert b.tolist() == [0, 0, 0, 1]
    assert j.tolist() == [2, 3, 4, 1]


def test_label_at_position_zero_is_never_a_target() -> None:
    labels = torch.tensor([[4, -100, 6]])
    _, j = F.supervised_index(labels)
    assert j.tolist() == [2]


def test_topk_full_width_equals_log_softmax() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 11, dtype=torch.float64)
    targets = torch.randint(0, 11, (6,))
    ids, lps, tail, tlp = T.topk_from_logits(logits, targets, top_k=11, real_vocab=11)
    ref = torch.log_softmax(logits, -1)
    assert torch.equal(tail, torch.full_like(tail, float("-inf")))
    assert torch.allclose(lps, ref.gather(1, ids), atol=1e-12)
    assert torch.allclose(tlp, ref.gather(1, targets[:, None]).squeeze(1), atol=1e-12)
    assert (lps[:, :-1] >= lps[:, 1:]).all()


def test_padded_rows_are_not_part_of_the_distribution() -> None:
    torch.manual_seed(1)
    logits = torch.randn(5, 12, dtype=torch.float64)
    logits[:, 10:] += 5.0  # padded embedding rows with large mass
    ids, lps, tail, _ = T.topk_from_logits(logits, torch.zeros(5, dtype=torch.long), top_k=4, real_vocab=10)
    assert int(ids.max()) < 10
    real = torch.log_softmax(logits[:, :10], -1)
    assert torch.allclose(lps, real.gather(1, ids), atol=1e-12)
    total = torch.logsumexp(torch.cat([lps, tail[:, None]], 1), -1)
    assert torch.allclose(total, torch.zeros(5, dtype=torch.float64), atol=1e-12)
    _, _, tail_all, _ = T.topk_from_logits(logits, torch.zeros(5, dtype=torch.long), top_k=10, real_vocab=10)
    assert torch.isneginf(tail_all).all()  # k covers every real id: empty tail, padded mass ignored


def test_tail_is_accurate_on_a_peaked_teacher() -> None:
    # The top-1 holds all but ~1e-12 of the mass: log(1 - sum p) cancels in fp32, logsumexp does not.
    logits = torch.full((1, 1000), -30.0)
    logits[0, 0] = 0.0
    _ids, lps, tail, _ = T.topk_from_logits(
        logits, torch.zeros(1, dtype=torch.long), top_k=4, real_vocab=1000
    )
    exact = torch.log(torch.tensor(996.0, dtype=torch.float64)) - 30.0  # log(996 e^-30) - log(Z~1)
    assert abs(float(tail) - float(exact)) < 1e-4
    implied = torch.log1p(-torch.exp(lps).sum())
    assert not torch.isfinite(implied) or abs(float(implied) - float(exact)) > 1.0


def test_temperature_scales_logits() -> None:
    logits = torch.randn(3, 7, dtype=torch.float64)
    t = torch.zeros(3, dtype=torch.long)
    ids, lps, _, _ = T.topk_from_logits(logits, t, top_k=7, real_vocab=7, temperature=2.0)
    assert torch.allclose(lps, torch.log_softmax(logits / 2.0, -1).gather(1, ids), atol=1e-12)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(2, 2)


def test_autocast_guard_follows_deepspeed_state(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _Tiny()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    import transformers.integrations.deepspeed as hf_ds

    monkeypatch.setattr(hf_ds, "deepspeed_config", lambda: None)
    assert not F.deepspeed_active()
    assert isinstance(F.forward_context(model, torch.bfloat16), torch.autocast)
    # DeepSpeed live (faked both ways it can be detected): no nested autocast
    monkeypatch.setattr(hf_ds, "deepspeed_config", lambda: {"zero_optimization": {"stage": 3}})
    assert F.deepspeed_active()
    assert isinstance(F.forward_context(model, torch.bfloat16), contextlib.nullcontext)
    monkeypatch.setattr(hf_ds, "deepspeed_config", lambda: None)
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert isinstance(F.forward_context(model, torch.bfloat16), contextlib.nullcontext)
    # no autocast requested: none either way
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    assert isinstance(F.forward_context(model, None), contextlib.nullcontext)
