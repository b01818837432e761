"""A batch's teacher targets (``pipeline.cache.targets``): collate, the per-batch check, renormalisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.cache.format import CachedSample
from pipeline.cache.targets import collate_targets, renormalise_topk, teacher_topk
from pipeline.errors import CacheMismatchError


def _sample(sid: str, targets: list[int], k: int = 3) -> CachedSample:
    n = len(targets)
    return CachedSample(
        sample_id=sid,
        encoding_hash="h",
        num_tokens=n + 2,
        positions=np.arange(2, n + 2, dtype=np.int64),
        target_ids=np.asarray(targets, np.int64),
        topk_ids=np.tile(np.arange(k, dtype=np.int64), (n, 1)) + 10,
        topk_logprobs=np.full((n, k), math.log(0.3), np.float32),
        tail_logprobs=np.full(n, math.log(0.1), np.float32),
        target_logprobs=np.full(n, math.log(0.3), np.float32),
    )


def test_collate_concatenates_rows_in_batch_order() -> None:
    t = collate_targets([_sample("a", [5, 6]), _sample("b", [7])])
    assert t["target_ids"].tolist() == [5, 6, 7] and t["num_targets"].tolist() == [2, 1]
    assert t["topk_ids"].shape == (3, 3) and t["topk_ids"].dtype == torch.int64
    assert t["topk_logprobs"].dtype == torch.float32 and t["cached"].all()


def test_rows_the_cache_lacks_get_uniform_placeholders() -> None:
    t = collate_targets([None, _sample("b", [7])], counts=[2, 1])
    assert t["cached"].tolist() == [False, False, True] and t["num_targets"].tolist() == [2, 1]
    assert torch.allclose(t["topk_logprobs"][:2], torch.full((2, 3), -math.log(4)))
    with pytest.raises(ValueError, match="counts"):
        collate_targets([None, _sample("b", [7])])
    # the check skips placeholders: their target ids are unknown to the cache
    ids, lp, tail = teacher_topk(t, torch.tensor([1, 2, 7]), real_vocab=20)
    assert torch.allclose(torch.logsumexp(torch.cat([lp, tail[:, None]], 1), 1), torch.zeros(3))
    assert ids[:2].tolist() == [[0, 1, 2]] * 2 and ids[2].tolist() == [10, 11, 12]


def test_targets_must_be_the_cached_ones_and_ids_real() -> None:
    t = collate_targets([_sample("a", [5, 6])])
    teacher_topk(t, torch.tensor([5, 6]), real_vocab=13)
    with pytest.raises(CacheMismatchError, match="batch targets disagree"):
        teacher_topk(t, torch.tensor([5, 9]))
    with pytest.raises(CacheMismatchError, match="real vocabulary"):
        teacher_topk(t, torch.tensor([5, 6]), real_vocab=12)


def test_renormalise_topk_sums_to_one_and_keeps_ratios() -> None:
    lp = torch.log(torch.tensor([[0.5, 0.3], [0.2, 0.1]], dtype=torch.float64))
    tail = torch.log(torch.tensor([0.201, 0.0], dtype=torch.float64))  # mass 1.001 and 0.3 (tail empty)
    a, b = renormalise_topk(lp, tail)
    total = torch.logsumexp(torch.cat([a, b[:, None]], 1), 1)
    assert torch.allclose(total, torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(a[:, 0] - a[:, 1], lp[:, 0] - lp[:, 1])
    assert torch.isneginf(b[1])
