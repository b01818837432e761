"""The whole cache in numbers: one pass collects per-token and per-row statistics (:class:`Profile`),
:func:`summarise` condenses them, :func:`format_summary` prints them, :func:`sample_table` shows one
sample token by token, and :func:`rank_rows` orders rows by how much they are worth a look.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.cache.cachedir import Manifest
from pipeline.errors import CacheFormatError
from pipeline.inspection.tokens import (
    TOP_SHOWN,
    RowStats,
    TokenText,
    hit_limit,
    iter_samples,
    row_stats,
    token_stats,
    top_entries,
    written_ids_changed,
    written_limit,
)

# Raw size of one supervised token if stored naively: k int32 ids + k float32 logprobs, then the tail
# logprob (f32), target id (i32), target logprob (f32) and position (i32): 8k + 16 bytes.
RAW_BYTES_FIXED = 16
RAW_BYTES_PER_ENTRY = 8
PERCENTILES = (50, 90, 99)

# How the report's index can order rows ("worst first"); each key maps to (sort key, description).
# Ties fall back to storage order. The teacher-written rankings put their rows first, lowest mean
# p(target) first among them, then every other row.
RANKINGS: dict[str, tuple[Any, str]] = {
    "p_target": (lambda r: r.mean_target_prob, "lowest mean p(target)"),
    "tail": (lambda r: -r.mean_tail, "most tail mass"),
    "entropy": (lambda r: -r.mean_entropy, "highest entropy"),
    "outside": (lambda r: -r.outside_topk, "most targets outside the top-k"),
    "written_limit": (
        lambda r: r.mean_target_prob if r.hit_limit else np.inf,
        "teacher-written rows that hit max_new_tokens",
    ),
    "ids_changed": (
        lambda r: r.mean_target_prob if r.ids_changed else np.inf,
        "teacher-written rows whose ids changed on decode-then-encode",
    ),
}
# The rows a ranking is about, where that is not every row (the report's "worst by" lines list only these).
RANKING_ROWS: dict[str, Any] = {
    "outside": lambda r: r.outside_topk > 0,
    "written_limit": lambda r: r.hit_limit,
    "ids_changed": lambda r: r.ids_changed,
}
DEFAULT_RANKING = "p_target"


@dataclass
class Profile:
    """Statistics of every cached token and row, collected in one pass over the shards.

    ``tokens`` maps ``tail``, ``entropy``, ``target_prob``, ``target_rank`` (0-based, -1 outside the
    top-k), ``agree`` (teacher top-1 == target) and ``target_lp`` to flat float64 arrays [N] over all
    supervised tokens in storage order; ``rows`` holds one :class:`RowStats` per cached sample.
    """

    tokens: dict[str, np.ndarray]
    rows: list[RowStats]
    top_k: int


def profile(reader: Any) -> Profile:
    """One pass over ``reader``: every token's and every row's teacher statistics."""
    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("tail", "entropy", "target_prob", "target_rank", "agree", "target_lp")
    }
    rows: list[RowStats] = []
    limit = written_limit(reader.manifest)
    for sample in iter_samples(reader):
        st = token_stats(sample)
        rows.append(row_stats(sample, st, limit))
        for name, values in (
            ("tail", st.tail_mass),
            ("entropy", st.entropy),
            ("target_prob", st.target_prob),
            ("target_rank", st.target_rank),
            ("agree", st.top1_agrees),
            ("target_lp", sample.target_logprobs),
        ):
            cols[name].append(np.asarray(values, dtype=np.float64))
    tokens = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in cols.items()}
    return Profile(tokens=tokens, rows=rows, top_k=int(reader.top_k))


def _distribution(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    out = {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}
    out.update(mean=float(values.mean()), max=float(values.max()))
    return out


def summarise(reader: Any, prof: Profile | None = None) -> dict[str, Any]:
    """Counts, on-disk size, compression and teacher statistics of a cache.

    ``compression_ratio`` is ``raw_bytes_per_token / bytes_per_token`` with the raw size
    ``8 * top_k + 16`` bytes per token (see ``RAW_BYTES_*``); ``bytes`` counts the shard files only.
    ``top1_agreement`` is the fraction of tokens whose teacher top-1 is the target. ``prof``: an
    already collected :func:`profile` of the same reader.
    """
    prof = prof if prof is not None else profile(reader)
    manifest = Manifest(reader.manifest)
    shards = manifest.shards
    counts = manifest.counts
    col = prof.tokens
    tokens = int(col["agree"].size)
    total_bytes = int(sum(int(s.get("bytes", 0)) for s in shards))
    raw_per_token = RAW_BYTES_PER_ENTRY * reader.top_k + RAW_BYTES_FIXED
    per_token = total_bytes / tokens if tokens else float("nan")

    def mean(v: np.ndarray) -> float:
        return float(v.mean()) if v.size else float("nan")

    return {
        "samples": len(prof.rows),
        "supervised_tokens": tokens,
        "shards": len(shards),
        "bytes": total_bytes,
        "top_k": int(reader.top_k),
        "vocab_size": int(reader.vocab_size),
        "logprob_encoding": manifest.layout.get("logprob_encoding"),
        "bytes_per_token": per_token,
        "raw_bytes_per_token": raw_per_token,
        "compression_ratio": raw_per_token / per_token if tokens and total_bytes else float("nan"),
        "top1_agreement": mean(col["agree"]),
        "target_in_topk": mean((col["target_rank"] >= 0).astype(np.float64)),
        "mean_target_logprob": mean(col["target_lp"]),
        "tail_mass": _distribution(col["tail"]),
        "entropy": _distribution(col["entropy"]),
        "rows_in": counts.get("rows_in"),
        "skipped": int(counts.get("skipped", 0) or 0),
        "skipped_by_reason": dict(counts.get("skipped_by_reason", {})),
        "written": written_summary(reader.manifest, prof.rows),
    }


def written_summary(manifest: dict[str, Any], rows: list[RowStats]) -> dict[str, Any] | None:
    """Teacher-written rows, or None for a cache without any (and no written settings).

    ``rows``, ``hit_limit`` (None when the fingerprint records no limit) and ``ids_changed`` are
    counted in the shards (``ids_changed``: ``written_ids`` are not the leading cached targets);
    ``max_new_tokens`` is the fingerprint's; ``recorded`` is what the cache stage recorded in the
    manifest's counts (:func:`pipeline.cache.manifest.written_counts`: it also counts the rows that
    hit the limit and were skipped, and its ``retokenized`` also checks the end-of-turn after the
    response).
    """
    from pipeline.cache.manifest import written_counts

    limit = written_limit(manifest)
    written = [r for r in rows if r.teacher_written]
    recorded = written_counts(Manifest(manifest).counts)
    if not written and limit is None and not any(recorded.values()):
        return None
    return {
        "rows": len(written),
        "max_new_tokens": limit,
        "hit_limit": sum(r.hit_limit for r in written) if limit is not None else None,
        "ids_changed": sum(r.ids_changed for r in written),
        "recorded": recorded,
    }


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable text of :func:`summarise`'s dict."""

    def dist(d: dict[str, float], fmt: str) -> str:
        return "  ".join(f"{k} {v:{fmt}}" for k, v in d.items()) if d else "-"

    lines = [
        f"samples            {s['samples']}  (rows in: {s['rows_in']}, skipped: {s['skipped']})",
        f"supervised tokens  {s['supervised_tokens']}",
        f"top-k / vocab      {s['top_k']} / {s['vocab_size']}  ({s['logprob_encoding']})",
        f"shards             {s['shards']}  ({s['bytes']} bytes)",
        f"bytes per token    {s['bytes_per_token']:.1f}  (raw {s['raw_bytes_per_token']} = 8*k+16: "
        f"int32 id + fp32 logprob per entry, fp32 tail, int32 target, fp32 target logprob, int32 position)",
        f"compression        {s['compression_ratio']:.2f}x vs raw",
        f"top-1 agreement    {s['top1_agreement']:.4f}  (teacher top-1 == target)",
        f"target in top-k    {s['target_in_topk']:.4f}   mean target logprob {s['mean_target_logprob']:.4f}",
        f"tail mass          {dist(s['tail_mass'], '.3g')}",
        f"entropy (nats)     {dist(s['entropy'], '.3f')}  (over top-k + tail)",
    ]
    for reason, n in sorted(s["skipped_by_reason"].items()):
        lines.append(f"skipped            {reason}: {n}")
    w = s.get("written")
    if w:
        rec = w["recorded"]
        hit = "unknown (no limit recorded)" if w["hit_limit"] is None else str(w["hit_limit"])
        lines.append(
            f"teacher-written    {w['rows']} rows; hit max_new_tokens {w['max_new_tokens']}: {hit} cached "
            f"(+{rec['unfinished_skipped']} skipped); ids changed on decode-then-encode: {w['ids_changed']}"
        )
        if rec["written"] or rec["unknown_rows"] or not w["rows"]:
            lines.append(
                f"  recorded         written {rec['written']}, retokenized {rec['retokenized']}, "
                f"unfinished kept {rec['unfinished_kept']}, unfinished skipped {rec['unfinished_skipped']}"
                + (
                    f" ({rec['unknown_rows']} rows in shards without a tag record)"
                    if rec["unknown_rows"]
                    else ""
                )
            )
        else:  # written rows in the shards but no record: a cache from before per-shard row tags
            lines.append("  recorded         no per-shard counts in this manifest (an older cache)")
    return "\n".join(lines)


def rank_rows(rows: list[RowStats], key: str = DEFAULT_RANKING) -> list[RowStats]:
    """``rows`` worst first by ``key`` (one of :data:`RANKINGS`); rows without targets go last."""
    if key not in RANKINGS:
        raise ValueError(f"unknown ranking {key!r}; choose one of {', '.join(RANKINGS)}")
    fn = RANKINGS[key][0]
    order = sorted(range(len(rows)), key=lambda i: (rows[i].num_targets == 0, np.nan_to_num(fn(rows[i])), i))
    return [rows[i] for i in order]


def written_lines(sample: Any, limit: int | None) -> list[str]:
    """What :func:`sample_table` says about a teacher-written row (nothing for any other row)."""
    if not sample.teacher_written:
        return []
    flags = [f"{len(sample.written_ids)} generated tokens"]
    if hit_limit(sample, limit):
        flags.append(f"hit max_new_tokens {limit}")
    if written_ids_changed(sample):
        flags.append("decode-then-encode changed the ids: written_ids are not the leading targets")
    return [f"teacher-written    {'; '.join(flags)}", f"written text       {sample.written_text!r}"]


def sample_table(reader: Any, sample_id: str, tokenizer: Any = None) -> str:
    """Per-token table of one sample: position, target, its rank and logprob, tail mass, teacher top-5."""
    if sample_id not in reader:
        shown = ", ".join(reader.sample_ids[:5])
        raise CacheFormatError(f"sample {sample_id!r} is not in the cache (first ids: {shown})")
    sample = reader.get(sample_id)
    text = TokenText(tokenizer)
    st = token_stats(sample)
    k = reader.top_k
    head = f"{'pos':>6}  {'target':<16} {'rank':>5} {'logprob':>9} {'tail':>9}  teacher top-{TOP_SHOWN}"
    lines = [
        f"sample {sample_id}  ({sample.num_tokens} tokens, {sample.num_targets} supervised, "
        f"hash {sample.encoding_hash[:12]})",
        *written_lines(sample, written_limit(reader.manifest)),
        head,
    ]
    for i in range(sample.num_targets):
        rank = str(int(st.target_rank[i]) + 1) if st.target_rank[i] >= 0 else f">{k}"
        top = " | ".join(f"{t} {p:.3f}" for t, p in top_entries(sample, i, text))
        lines.append(
            f"{int(sample.positions[i]):>6}  {text(sample.target_ids[i])[:16]:<16} {rank:>5} "
            f"{float(sample.target_logprobs[i]):>9.4f} {float(st.tail_mass[i]):>9.2e}  {top}"
        )
    return "\n".join(lines)
