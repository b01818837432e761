"""Per-token and per-row teacher statistics of cached samples, and how token ids are shown.

The base every other inspection module builds on (summary, audit, report, figures import it; it
imports none of them). A "reader" is anything with the :class:`pipeline.cache.reader.CacheReader`
surface (``manifest``, ``top_k``, ``vocab_size``, ``sample_ids``, ``get``, ``__len__``), so tests can
wrap a real reader to inject corruptions the writer refuses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from pipeline.cache.cachedir import Manifest
from pipeline.cache.format import CachedSample

TOP_SHOWN = 5  # teacher entries shown per token in the table and the report's hover


@dataclass
class TokenStats:
    """Per-token teacher statistics of one sample (``n`` targets).

    top1_agrees bool [n]; target_rank int64 [n] (0-based rank of the target in the top-k, -1 when
    outside); target_prob float64 [n]; tail_mass float64 [n]; entropy float64 [n] (nats, over the
    k+1 categories top-k + tail, renormalised so quantisation drift does not bias it).
    """

    top1_agrees: np.ndarray
    target_rank: np.ndarray
    target_prob: np.ndarray
    tail_mass: np.ndarray
    entropy: np.ndarray


def token_stats(sample: CachedSample) -> TokenStats:
    """Teacher statistics of every supervised token of ``sample``."""
    ids = sample.topk_ids
    match = ids == sample.target_ids[:, None]
    rank = np.where(match.any(axis=1), match.argmax(axis=1), -1).astype(np.int64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        p = np.exp(
            np.concatenate([sample.topk_logprobs, sample.tail_logprobs[:, None]], axis=1).astype(np.float64)
        )
        p = p / p.sum(axis=1, keepdims=True)
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return TokenStats(
        top1_agrees=(ids[:, 0] == sample.target_ids) if ids.shape[1] else np.zeros(len(ids), bool),
        target_rank=rank,
        target_prob=np.exp(sample.target_logprobs.astype(np.float64)),
        tail_mass=np.exp(sample.tail_logprobs.astype(np.float64)),
        entropy=-plogp.sum(axis=1),
    )


@dataclass
class RowStats:
    """One cached row's teacher statistics, the keys the report's index sorts by.

    ``mean_target_prob`` and ``mean_tail``/``mean_entropy`` are means over the row's supervised
    tokens (NaN for a row without targets); ``outside_topk`` counts targets the top-k does not hold.
    Teacher-written rows: ``teacher_written``; ``written_tokens`` = len(written_ids);
    ``ids_changed`` (:func:`written_ids_changed`); ``hit_limit``: the response is as long as the
    cache's ``written_responses.max_new_tokens``, so it ran into the limit without stopping (the stop
    token is never part of written_ids).
    """

    sample_id: str
    num_tokens: int
    num_targets: int
    mean_target_prob: float
    min_target_prob: float
    mean_tail: float
    mean_entropy: float
    top1_agreement: float
    outside_topk: int
    teacher_written: bool = False
    written_tokens: int = 0
    ids_changed: bool = False
    hit_limit: bool = False


def written_limit(manifest: dict[str, Any]) -> int | None:
    """``max_new_tokens`` of the cache's teacher-written responses (None: the fingerprint has none)."""
    settings = Manifest(manifest).written_responses
    limit = settings.get("max_new_tokens") if isinstance(settings, dict) else None
    return int(limit) if limit is not None else None


def written_ids_changed(sample: CachedSample) -> bool:
    """A teacher-written row whose ``written_ids`` [m] are not the leading cached ``target_ids[:m]``
    followed by one more target (its end-of-turn): decoding then encoding changed the ids."""
    m = len(sample.written_ids)
    if not sample.teacher_written:
        return False
    return not (sample.num_targets > m and np.array_equal(sample.target_ids[:m], sample.written_ids))


def hit_limit(sample: CachedSample, limit: int | None) -> bool:
    """A teacher-written row whose response reached ``limit`` tokens (it ran into max_new_tokens)."""
    return bool(sample.teacher_written and limit is not None and len(sample.written_ids) >= limit)


def row_stats(sample: CachedSample, st: TokenStats | None = None, limit: int | None = None) -> RowStats:
    """The :class:`RowStats` of ``sample`` (``st``: its already computed token statistics; ``limit``:
    the cache's :func:`written_limit`)."""
    st = st if st is not None else token_stats(sample)
    n = sample.num_targets

    def mean(v: np.ndarray) -> float:
        return float(v.mean()) if n else float("nan")

    return RowStats(
        sample_id=sample.sample_id,
        num_tokens=sample.num_tokens,
        num_targets=n,
        mean_target_prob=mean(st.target_prob),
        min_target_prob=float(st.target_prob.min()) if n else float("nan"),
        mean_tail=mean(st.tail_mass),
        mean_entropy=mean(st.entropy),
        top1_agreement=mean(st.top1_agrees.astype(np.float64)),
        outside_topk=int((st.target_rank < 0).sum()),
        teacher_written=bool(sample.teacher_written),
        written_tokens=len(sample.written_ids),
        ids_changed=written_ids_changed(sample),
        hit_limit=hit_limit(sample, limit),
    )


def iter_samples(reader: Any) -> Iterator[CachedSample]:
    """Every live cached sample, once each, in storage order (:func:`pipeline.cache.export.live_samples`:
    a real ``CacheReader`` decodes a record batch at a time while no stored row is superseded; any
    other object with the reader surface, such as the tests' wrapped readers, is read through ``get``)."""
    from pipeline.cache.export import live_samples

    yield from live_samples(reader)


class TokenText:
    """Display text of token ids: the tokenizer's decoding, escaped, or ``#id`` without a tokenizer."""

    def __init__(self, tokenizer: Any = None):
        self.tokenizer = tokenizer
        self._text = lru_cache(maxsize=65536)(self._decode)

    def _decode(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"#{token_id}"
        try:
            text = self.tokenizer.decode(
                [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        except (ValueError, TypeError, IndexError, OverflowError):
            return f"#{token_id}"
        # repr-style escapes keep newlines and blanks visible in a one-line table cell.
        return repr(text)[1:-1] if text else f"#{token_id}"

    def __call__(self, token_id: int) -> str:
        return self._text(int(token_id))


def top_entries(sample: CachedSample, i: int, text: TokenText, n: int = TOP_SHOWN) -> list[tuple[str, float]]:
    """(token text, probability) of the teacher's first ``n`` entries at target ``i``."""
    ids, lps = sample.topk_ids[i, :n], sample.topk_logprobs[i, :n]
    return [(text(t), float(np.exp(lp))) for t, lp in zip(ids, lps, strict=True)]
