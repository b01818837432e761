"""Teacher forward and top-k extraction for the cache.

Alignment is by slicing: a supervised target at position j (labels[j] != -100, j >= 1) is
predicted by the hidden state at j-1; never ``torch.roll`` (it wraps the last token into the
window). The output projection runs in fp32 on those hidden states only: a bf16 head quantises
logits far beyond the cache's fidelity budget, and full-vocabulary logits for a whole batch do
not fit in memory on a real teacher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pipeline.forward import forward_context, hidden_states, project_fp32, supervised_index

__all__ = ["TopK", "full_logprobs", "teacher_topk", "topk_from_logits"]


@dataclass
class TopK:
    """Top-k teacher distribution for the N supervised targets of a batch (row-major order).

    topk_ids int64 [N, k] by descending logprob; topk_logprobs float32 [N, k]; tail_logprobs
    float32 [N] (log of the mass outside the top-k, -inf when none); target_logprobs float32 [N];
    target_ids int64 [N]; positions int64 [N] (target position j within its row); batch_index int64 [N].
    """

    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    tail_logprobs: torch.Tensor
    target_logprobs: torch.Tensor
    target_ids: torch.Tensor
    positions: torch.Tensor
    batch_index: torch.Tensor


def topk_from_logits(
    logits: torch.Tensor, target_ids: torch.Tensor, top_k: int, real_vocab: int, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k, stored tail and target logprob from fp32 logits [N, V] (V may include padded rows).

    The distribution is the softmax over the tokenizer's real ids (``< real_vocab``). Padded
    embedding rows (e.g. 151936 vs 152064 wide heads) are not tokens: they are never targets, a
    trained model puts ~0 mass there, and a student whose logit width equals the tokenizer would
    face an infinite forward KL against any mass the teacher left on them. The student side of the
    loss is restricted to the same ids. The tail is ``logsumexp(real ids outside top-k) - logsumexp(real
    ids)``, computed from logits (``log(1 - sum p)`` cancels catastrophically on a peaked teacher),
    and -inf when the top-k covers every real id.
    Returns (ids int64 [N,k], logprobs float32 [N,k], tail float32 [N], target_logprobs float32 [N]).
    """
    # fp32 at least (float64 stays float64, for exactness tests); never down-cast
    z = (logits if logits.dtype == torch.float64 else logits.float())[:, :real_vocab] / temperature
    log_z = torch.logsumexp(z, dim=-1)
    k = min(top_k, real_vocab)
    vals, ids = z.topk(k, dim=-1)
    outside = z.scatter(1, ids, float("-inf"))
    tail = torch.logsumexp(outside, dim=-1) - log_z
    logprobs = vals - log_z[:, None]
    target_lp = z.gather(1, target_ids[:, None]).squeeze(1) - log_z
    return ids, logprobs, tail, target_lp


@torch.no_grad()
def teacher_topk(
    model: torch.nn.Module,
    batch: dict[str, Any],
    top_k: int,
    real_vocab: int,
    temperature: float = 1.0,
    autocast_dtype: torch.dtype | None = None,
    chunk_size: int = 4096,
) -> TopK:
    """Run the teacher on a collated batch and extract the top-k distribution of every target."""
    labels = batch["labels"]
    b, j = supervised_index(labels)
    with forward_context(model, autocast_dtype):
        h = hidden_states(model, batch)
    h_pred = h[b, j - 1]  # the hidden state at j-1 predicts the target at j
    targets = labels[b, j].to(torch.int64)
    parts = []
    for s in range(0, h_pred.shape[0], chunk_size):
        logits = project_fp32(model, h_pred[s : s + chunk_size])
        parts.append(topk_from_logits(logits, targets[s : s + chunk_size], top_k, real_vocab, temperature))
    if parts:
        ids, lps, tail, tlp = (torch.cat(x) for x in zip(*parts, strict=True))
    else:
        k = min(top_k, real_vocab)
        ids = torch.zeros(0, k, dtype=torch.int64)
        lps = torch.zeros(0, k)
        tail = torch.zeros(0)
        tlp = torch.zeros(0)
    return TopK(ids.cpu(), lps.cpu(), tail.cpu(), tlp.cpu(), targets.cpu(), j.cpu(), b.cpu())


@torch.no_grad()
def full_logprobs(
    model: torch.nn.Module, batch: dict[str, Any], real_vocab: int, temperature: float = 1.0
) -> torch.Tensor:
    """Teacher log-softmax over the real ids at every supervised target: float32 [N, real_vocab] (tests, audits)."""
    b, j = supervised_index(batch["labels"])
    h = hidden_states(model, batch)
    return torch.log_softmax(project_fp32(model, h[b, j - 1])[:, :real_vocab] / temperature, dim=-1)
