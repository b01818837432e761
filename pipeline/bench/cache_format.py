"""``distill bench cache-format``: bytes per supervised token, fidelity and decode speed of the cache.

Synthetic teacher distributions (:func:`synthetic_topk`, generated once at k=128 and cut to smaller k,
the cut-off entries joining the tail) go through the real writer into real shards, in samples of 256
targets whose target is the top-1 id, and are read back through the real reader into tensors.

Reported per k: shard bytes / targets; KL(exact || decoded) in float64 over the k+1 categories (top-k
and tail, the decoded distribution renormalised), mean and 99th percentile over positions; decoded
targets per CPU second of the single-threaded reader (best of three passes; wall-clock beside it); and two uncompressed baselines: naive
(int32 ids + fp32 logprobs, ``8k`` bytes) and packed (``ceil(log2 V)``-bit ids + bf16 logprobs).
The last printed line is one JSON object for k=64.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import logsumexp

from pipeline.cache.cachedir import Manifest
from pipeline.cache.format import DEFAULT_LOGPROB_ENCODING, CachedSample
from pipeline.cache.reader import CacheReader
from pipeline.cache.writer import CacheWriter

log = logging.getLogger(__name__)

SAMPLE_TARGETS = 256
VOCAB = 151_936


def _unique_per_row(ids: np.ndarray, vocab: int) -> np.ndarray:
    """Make ids unique within each row exactly as the reference loop does (bit-identical, verified
    in tests): position by position, bump an id by one (mod vocab) while an earlier one holds it."""
    ids = ids.copy()
    for j in range(1, ids.shape[1]):
        col = ids[:, j].copy()
        rows = np.arange(ids.shape[0])
        while rows.size:
            rows = rows[(ids[rows, :j] == col[rows, None]).any(axis=1)]
            col[rows] = (col[rows] + 1) % vocab
        ids[:, j] = col
    return ids


def synthetic_topk(
    n: int = 50_000, k: int = 128, vocab: int = VOCAB, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic teacher top-k: ids int64 [n, k] (unique per row), logprobs float64 [n, k] descending,
    tail float64 [n] (log of the mass outside the top k). The generator of the cache-format issue."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.9, 4.0, size=n)  # peakiness per position
    noise = rng.normal(0.0, 0.25, size=(n, k))  # standard deviation 0.25
    u = rng.random((n, k))
    r = np.arange(1, k + 1, dtype=np.float64)
    logits = -a[:, None] * np.log(r)[None, :] + noise  # log-weights of the top k ranks
    grid = np.linspace(0.9, 4.0, 256)  # log sum of r^-a over ranks k+1..vocab
    rest = np.arange(k + 1, vocab + 1, dtype=np.float64)
    log_rest = np.interp(a, grid, [logsumexp(-g * np.log(rest)) for g in grid])
    log_z = np.logaddexp(logsumexp(logits, axis=1), log_rest)
    logprobs = -np.sort(-(logits - log_z[:, None]), axis=1)
    tail = log_rest - log_z  # log of the mass outside the top k
    ids = np.floor(vocab * u**3).astype(np.int64)  # skewed to low ids, as BPE vocabularies
    return _unique_per_row(ids, vocab), logprobs, tail


def cut_topk(
    ids: np.ndarray, logprobs: np.ndarray, tail: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``k`` of a wider top-k; the entries cut off join the tail."""
    if k == ids.shape[1]:
        return ids, logprobs, tail
    return ids[:, :k], logprobs[:, :k], np.logaddexp(tail, logsumexp(logprobs[:, k:], axis=1))


def kl_per_position(
    ids: np.ndarray,
    logprobs: np.ndarray,
    tail: np.ndarray,
    dec_ids: np.ndarray,
    dec_logprobs: np.ndarray,
    dec_tail: np.ndarray,
) -> np.ndarray:
    """float64 [n] KL(exact || decoded) over top-k + tail, decoded renormalised; ids must match as sets."""
    a, b = np.argsort(ids, axis=1), np.argsort(dec_ids, axis=1)
    if not np.array_equal(np.take_along_axis(ids, a, 1), np.take_along_axis(dec_ids, b, 1)):
        raise AssertionError("decoded top-k ids differ from the written ones (ids must be lossless)")
    p = np.concatenate([np.take_along_axis(logprobs, a, 1), tail[:, None]], axis=1).astype(np.float64)
    q = np.concatenate([np.take_along_axis(dec_logprobs, b, 1), dec_tail[:, None]], axis=1).astype(np.float64)
    q = q - logsumexp(q, axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        terms = np.where(np.isneginf(p), 0.0, np.exp(p) * (p - q))
    return terms.sum(axis=1)


def _bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest even), returned as float32."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def _write_synthetic(
    ids: np.ndarray, lp32: np.ndarray, tail32: np.ndarray, root: Path, logprob_encoding: str
) -> float:
    """Write the targets as a cache at ``root``, ``SAMPLE_TARGETS`` per sample; the seconds it took."""
    n, k = ids.shape
    t0 = time.perf_counter()
    with CacheWriter(
        root,
        fingerprint={"bench": "synthetic", "k": k},
        top_k=k,
        vocab_size=VOCAB,
        logprob_encoding=logprob_encoding,
    ) as writer:
        for s in range(0, n, SAMPLE_TARGETS):
            sl = slice(s, min(n, s + SAMPLE_TARGETS))
            m = sl.stop - sl.start
            writer.add(
                CachedSample(
                    sample_id=f"synthetic-{s // SAMPLE_TARGETS:06d}",
                    encoding_hash="0" * 64,
                    num_tokens=m + 1,
                    positions=np.arange(1, m + 1),
                    target_ids=ids[sl, 0].copy(),
                    topk_ids=ids[sl],
                    topk_logprobs=lp32[sl],
                    tail_logprobs=tail32[sl],
                    target_logprobs=lp32[sl, 0].copy(),
                )
            )
    return time.perf_counter() - t0


def _read_back(root: Path) -> tuple[float, float, dict[str, Any]]:
    """(CPU s, wall s) of decoding the whole cache on one thread, and every row read back."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reader = CacheReader(root)
        cpu, wall = _decode_seconds(reader)
        return cpu, wall, reader.batch(reader.sample_ids)
    finally:
        torch.set_num_threads(threads)


def bench_one(
    ids: np.ndarray,
    logprobs: np.ndarray,
    tail: np.ndarray,
    root: Path,
    logprob_encoding: str = DEFAULT_LOGPROB_ENCODING,
) -> dict[str, Any]:
    """Write, read back and score one top-k width; ``root`` must not exist yet."""
    n, k = ids.shape
    lp32, tail32 = logprobs.astype(np.float32), tail.astype(np.float32)
    write_s = _write_synthetic(ids, lp32, tail32, root, logprob_encoding)
    shard_bytes = sum(p.stat().st_size for p in root.glob("shard-*.arrow"))
    cpu, wall, full = _read_back(root)
    kl = kl_per_position(
        ids,
        logprobs,
        tail,
        full["topk_ids"].numpy(),
        full["topk_logprobs"].numpy(),
        full["tail_logprobs"].numpy(),
    )
    bf16 = kl_per_position(ids, logprobs, tail, ids, _bf16(lp32), _bf16(tail32))
    return {
        "k": k,
        "bytes_per_token": shard_bytes / n,
        "kl_fidelity": float(kl.mean()),
        "kl_fidelity_p99": float(np.quantile(kl, 0.99)),
        "decode_tokens_per_s": n / cpu,
        "decode_wall_tokens_per_s": n / wall,
        "write_tokens_per_s": n / write_s,
        "baseline_bytes_per_token": 8.0 * k,
        "packed_bytes_per_token": k * (math.ceil(math.log2(VOCAB)) + 16) / 8,
        "packed_kl_fidelity": float(bf16.mean()),
    }


def _decode_seconds(reader: CacheReader, passes: int = 3) -> tuple[float, float]:
    """CPU and wall seconds of the best of ``passes`` in-order reads of the whole cache, 32 samples a batch.

    Decoding is single-threaded (torch set to 1 thread, Arrow reads without threads), so the process's
    CPU time is one core's work; on a shared machine the wall time also counts other processes' turns.
    """
    cpu = wall = math.inf
    for _ in range(passes):
        c0, w0 = time.process_time(), time.perf_counter()
        for i in range(0, len(reader), 32):
            reader.batch(reader.sample_ids[i : i + 32])
        cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - w0)
    return max(cpu, 1e-9), max(wall, 1e-9)


def bench_real_cache(root: str | Path) -> dict[str, Any]:
    """Bytes per target and decode speed of an existing cache (no fidelity: the exact values are gone)."""
    import torch

    reader = CacheReader(root)
    record = Manifest(reader.manifest)
    targets, shard_bytes = record.targets, record.shard_bytes
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cpu, _ = _decode_seconds(reader, passes=1)
    finally:
        torch.set_num_threads(threads)
    return {
        "k": reader.top_k,
        "targets": targets,
        "bytes_per_token": shard_bytes / max(targets, 1),
        "decode_tokens_per_s": targets / cpu,
        "logprob_encoding": reader.layout.logprob_encoding,
    }


def bench_cache_format(
    top_ks: tuple[int, ...] = (16, 32, 64, 128),
    n: int = 50_000,
    out_dir: str | Path | None = None,
    real_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Run the benchmark, print a table and (last line) the k=64 JSON; return that JSON plus ``by_k``.

    ``out_dir`` keeps the shards (``out_dir/k{K}``); by default they go to a temporary directory.
    """
    t_start = time.perf_counter()
    ids, logprobs, tail = synthetic_topk(n=n, k=max(128, *top_ks))
    tmp = Path(tempfile.mkdtemp(prefix="cache-bench-")) if out_dir is None else Path(out_dir)
    rows: dict[int, dict[str, Any]] = {}
    try:
        for k in top_ks:
            root = tmp / f"k{k}"
            if root.exists():
                shutil.rmtree(root)
            rows[k] = bench_one(*cut_topk(ids, logprobs, tail, k), root)
    finally:
        if out_dir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("cache format v1 (%s), %d synthetic targets, V=%d", DEFAULT_LOGPROB_ENCODING, n, VOCAB)
    log.info(
        f"{'k':>4} {'B/token':>8} {'naive':>6} {'packed':>7} {'vs packed':>9} {'KL mean':>9} {'KL p99':>9} "
        f"{'bf16 KL':>9} {'decode tok/s':>13} {'(wall)':>11} {'write tok/s':>12}"
    )
    for k, r in rows.items():
        log.info(
            f"{k:>4} {r['bytes_per_token']:8.1f} {r['baseline_bytes_per_token']:6.0f} "
            f"{r['packed_bytes_per_token']:7.0f} {r['packed_bytes_per_token'] / r['bytes_per_token']:8.2f}x "
            f"{r['kl_fidelity']:9.2e} {r['kl_fidelity_p99']:9.2e} {r['packed_kl_fidelity']:9.2e} "
            f"{r['decode_tokens_per_s']:13,.0f} {r['decode_wall_tokens_per_s']:11,.0f} {r['write_tokens_per_s']:12,.0f}"
        )
    if real_cache is not None:
        real = bench_real_cache(real_cache)
        log.info(
            f"real cache {real_cache}: k={real['k']} {real['logprob_encoding']}, {real['targets']} targets, "
            f"{real['bytes_per_token']:.1f} B/token, decode {real['decode_tokens_per_s']:,.0f} tok/s"
        )
    log.info("(bench took %.1f s)", time.perf_counter() - t_start)
    key = 64 if 64 in rows else top_ks[-1]
    summary = {
        name: rows[key][name]
        for name in (
            "bytes_per_token",
            "kl_fidelity",
            "kl_fidelity_p99",
            "decode_tokens_per_s",
            "baseline_bytes_per_token",
            "packed_bytes_per_token",
        )
    }
    summary = {"k": key, "n": n, **{name: round(v, 9 if "kl" in name else 2) for name, v in summary.items()}}
    return {**summary, "by_k": rows, **({"real_cache": real} if real_cache is not None else {})}
