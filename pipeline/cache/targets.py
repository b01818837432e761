"""A batch's teacher targets from cache rows: the ONE home for training, evaluation and the reader.

Three steps, each done here only:

- ``batch_targets`` / ``collate_targets``: cache rows concatenated in batch order (row-major, as the
  loss sees the targets) into one dict of tensors; ``CacheReader.batch`` builds the same dict from a
  whole decoded run. Evaluation scores rows the cache lacks too: ``collate_targets`` gives them a
  uniform placeholder distribution, marked False in ``cached`` so their KL is never counted.
- ``teacher_topk``: the per-batch half of the alignment check (the batch's supervised targets must be
  the cached ones, in order; the encoding hash is the per-sample half,
  ``pipeline.binding.require_cached_encoding``), cached ids inside the student's real vocabulary, and
- ``renormalise_topk``: the decoded top-k + tail made to sum to exactly one.

Knows no models: tensors and cache rows only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from pipeline.cache.format import CachedSample
from pipeline.errors import CacheMismatchError


def batch_targets(
    topk_ids: np.ndarray,
    topk_logprobs: np.ndarray,
    tail_logprobs: np.ndarray,
    target_ids: np.ndarray,
    target_logprobs: np.ndarray,
    num_targets: np.ndarray,
    cached: np.ndarray | None = None,
) -> dict[str, torch.Tensor]:
    """The batch dict of N concatenated targets of B rows (numpy in, tensors sharing memory out).

    ``topk_ids`` int64 [N, k]; ``topk_logprobs`` float32 [N, k]; ``tail_logprobs``,
    ``target_logprobs`` float32 [N]; ``target_ids`` int64 [N]; ``num_targets`` int64 [B];
    ``cached`` bool [N] (True where a target is the cache's, False on a placeholder; all True if None).
    """

    def t(a: np.ndarray, dtype: type) -> torch.Tensor:
        return torch.from_numpy(np.asarray(a).astype(dtype, copy=False))

    n = len(target_ids)
    return {
        "topk_ids": t(topk_ids, np.int64),
        "topk_logprobs": t(topk_logprobs, np.float32),
        "tail_logprobs": t(tail_logprobs, np.float32),
        "target_ids": t(target_ids, np.int64),
        "target_logprobs": t(target_logprobs, np.float32),
        "num_targets": t(num_targets, np.int64),
        "cached": t(np.ones(n, bool) if cached is None else cached, np.bool_),
    }


def collate_targets(
    samples: Sequence[CachedSample | None], counts: Sequence[int] | None = None
) -> dict[str, torch.Tensor]:
    """Cache rows in batch order as ``batch_targets``' dict.

    A ``None`` entry is a row the cache lacks: it gets ``counts[i]`` placeholder targets (ids ``0..k)``,
    every category at ``-log(k + 1)``, target id -1) with ``cached`` False. ``counts`` (the batch's
    supervised-target count per row) is needed only when there is a ``None`` entry; at least one entry
    must be a cache row (it gives ``k``).
    """
    real = [s for s in samples if s is not None]
    if not real:
        raise ValueError("collate_targets needs at least one cache row")
    k = real[0].topk_ids.shape[1]
    parts: dict[str, list[np.ndarray]] = {
        f: []
        for f in ("topk_ids", "topk_logprobs", "tail_logprobs", "target_ids", "target_logprobs", "cached")
    }
    num = []
    for i, s in enumerate(samples):
        if s is None:
            if counts is None:
                raise ValueError("a row the cache lacks needs the batch's target counts")
            c = int(counts[i])
            flat = np.full(c, -math.log(k + 1), np.float32)
            row: dict[str, np.ndarray] = {
                "topk_ids": np.broadcast_to(np.arange(k, dtype=np.int64), (c, k)),
                "topk_logprobs": np.full((c, k), -math.log(k + 1), np.float32),
                "tail_logprobs": flat,
                "target_ids": np.full(c, -1, np.int64),
                "target_logprobs": flat,
                "cached": np.zeros(c, bool),
            }
        else:
            c = len(s.target_ids)
            row = {f: np.asarray(getattr(s, f)) for f in parts if f != "cached"}
            row["cached"] = np.ones(c, bool)
        num.append(c)
        for f in parts:
            parts[f].append(row[f])
    cat = {f: np.concatenate(v) if v else np.zeros(0) for f, v in parts.items()}
    return batch_targets(
        cat["topk_ids"].reshape(-1, k),
        cat["topk_logprobs"].reshape(-1, k),
        cat["tail_logprobs"],
        cat["target_ids"],
        cat["target_logprobs"],
        np.asarray(num, np.int64),
        cat["cached"],
    )


def teacher_topk(
    teacher: dict[str, torch.Tensor], targets: torch.Tensor, real_vocab: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch's cached top-k, checked and normalised: ``(ids [N, k] int64, logprobs [N, k], tail [N])``.

    ``teacher``: ``collate_targets``' dict; ``targets``: the batch's supervised targets ``[N]`` (row
    major), which must be the cached ones wherever ``cached`` is True. Cached ids must be real token ids
    (``< real_vocab`` when given; the fused loss checks it again on the device).
    """
    t = {k: v.to(targets.device) for k, v in teacher.items()}
    mask = t["cached"]
    if t["target_ids"].shape != targets.shape or not torch.equal(t["target_ids"][mask], targets[mask]):
        raise CacheMismatchError(
            f"batch targets disagree with the cache ({targets.numel()} supervised tokens in the batch, "
            f"{t['target_ids'].numel()} in the cache): the collator or template changed the labels"
        )
    if real_vocab and t["topk_ids"].numel() and int(t["topk_ids"].max()) >= real_vocab:
        raise CacheMismatchError(
            f"cached id {int(t['topk_ids'].max())} is outside the student's real vocabulary ({real_vocab})"
        )
    # the default encoding decodes values to their cell centres: compare normalised distributions
    lp, tail = renormalise_topk(t["topk_logprobs"], t["tail_logprobs"])
    return t["topk_ids"], lp, tail


def renormalise_topk(
    topk_logprobs: torch.Tensor, tail_logprobs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Renormalise a decoded top-k + tail distribution so its k+1 categories sum to exactly 1.

    A lossy cache decodes each value to its quantiser cell, so the decoded mass is 1 only to ~1e-3;
    the divergence should compare distributions. Args: topk_logprobs float [N, k], tail_logprobs float
    [N] (-inf allowed). Returns both shifted by the same per-row log-normaliser (fp32 at least).
    """
    wide = torch.float64 in (topk_logprobs.dtype, tail_logprobs.dtype)
    dtype = torch.float64 if wide else torch.float32
    lp, tail = topk_logprobs.to(dtype), tail_logprobs.to(dtype)
    log_z = torch.logsumexp(torch.cat([lp, tail[:, None]], dim=1), dim=1)
    return lp - log_z[:, None], tail - log_z
