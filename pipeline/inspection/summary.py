"""``distill inspect CACHE``: summarise a teacher cache, show one sample's tokens, audit, export.

The library functions take a reader (anything with the :class:`pipeline.cache.reader.CacheReader`
surface: ``manifest``, ``top_k``, ``vocab_size``, ``sample_ids``, ``get``) so tests call them without
argparse:

- :func:`summarise` -> dict of counts, size, compression and teacher statistics;
- :func:`sample_table` -> per-token text table of one sample;
- :func:`pipeline.inspection.audit.audit` -> list of problems (empty when the cache is sound);
- :func:`pipeline.inspection.html.write_html` -> a self-contained HTML page.

:func:`run_inspect` is what the CLI calls; it returns 1 when ``--audit`` finds a problem.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.cache.format import MANIFEST_NAME, CachedSample
from pipeline.errors import CacheFormatError, ConfigError

# Raw size of one supervised token if stored naively: k int32 ids + k float32 logprobs, then the tail
# logprob (f32), target id (i32), target logprob (f32) and position (i32): 8k + 16 bytes.
RAW_BYTES_FIXED = 16
RAW_BYTES_PER_ENTRY = 8
PERCENTILES = (50, 90, 99)
TOP_SHOWN = 5  # teacher entries shown per token in the table and the HTML hover


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
    with np.errstate(over="ignore", invalid="ignore"):
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


def iter_samples(reader: Any) -> Iterator[CachedSample]:
    """Every cached sample, in storage order.

    A real ``CacheReader`` is read a record batch at a time (one decode per batch instead of one per
    sample); any other object with the reader surface (tests wrap readers) through ``get``.
    """
    from pipeline.cache.reader import CacheReader

    if not isinstance(reader, CacheReader):
        for sid in reader.sample_ids:
            yield reader.get(sid)
        return
    for block, d, positions in reader.iter_blocks():
        ends = np.cumsum(block.num_targets)
        for r, sid in enumerate(block.sample_ids):
            sl = slice(int(ends[r] - block.num_targets[r]), int(ends[r]))
            yield CachedSample(
                sample_id=sid,
                encoding_hash=block.hashes[r],
                num_tokens=int(block.num_tokens[r]),
                positions=positions[sl].astype(np.int64),
                target_ids=d.target_ids[sl],
                topk_ids=d.topk_ids[sl],
                topk_logprobs=d.topk_logprobs[sl],
                tail_logprobs=d.tail_logprobs[sl],
                target_logprobs=d.target_logprobs[sl],
            )


def _distribution(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    out = {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}
    out.update(mean=float(values.mean()), max=float(values.max()))
    return out


def summarise(reader: Any) -> dict[str, Any]:
    """Counts, on-disk size, compression and teacher statistics of a cache.

    ``compression_ratio`` is ``raw_bytes_per_token / bytes_per_token`` with the raw size
    ``8 * top_k + 16`` bytes per token (see ``RAW_BYTES_*``); ``bytes`` counts the shard files only.
    ``top1_agreement`` is the fraction of tokens whose teacher top-1 is the target.
    """
    manifest = reader.manifest
    shards = manifest.get("shards", [])
    counts = manifest.get("counts", {})
    # Per-token columns, one float64 array per sample; concatenated once at the end.
    cols: dict[str, list[np.ndarray]] = {
        "tail": [],
        "entropy": [],
        "agree": [],
        "in_topk": [],
        "target_lp": [],
    }
    n_samples = 0
    for sample in iter_samples(reader):
        n_samples += 1
        st = token_stats(sample)
        for name, values in (
            ("tail", st.tail_mass),
            ("entropy", st.entropy),
            ("agree", st.top1_agrees),
            ("in_topk", st.target_rank >= 0),
            ("target_lp", sample.target_logprobs),
        ):
            cols[name].append(np.asarray(values, dtype=np.float64))
    col = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in cols.items()}
    tokens = int(col["agree"].size)
    total_bytes = int(sum(int(s.get("bytes", 0)) for s in shards))
    raw_per_token = RAW_BYTES_PER_ENTRY * reader.top_k + RAW_BYTES_FIXED
    per_token = total_bytes / tokens if tokens else float("nan")
    mean = {name: float(v.mean()) if v.size else float("nan") for name, v in col.items()}
    return {
        "samples": n_samples,
        "supervised_tokens": tokens,
        "shards": len(shards),
        "bytes": total_bytes,
        "top_k": int(reader.top_k),
        "vocab_size": int(reader.vocab_size),
        "logprob_encoding": manifest.get("layout", {}).get("logprob_encoding"),
        "bytes_per_token": per_token,
        "raw_bytes_per_token": raw_per_token,
        "compression_ratio": raw_per_token / per_token if tokens and total_bytes else float("nan"),
        "top1_agreement": mean["agree"],
        "target_in_topk": mean["in_topk"],
        "mean_target_logprob": mean["target_lp"],
        "tail_mass": _distribution(col["tail"]),
        "entropy": _distribution(col["entropy"]),
        "rows_in": counts.get("rows_in"),
        "skipped": int(counts.get("skipped", 0) or 0),
        "skipped_by_reason": dict(counts.get("skipped_by_reason", {})),
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
    return "\n".join(lines)


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


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer saved in ``path`` (a model or tokenizer directory); ``ConfigError`` if unreadable."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"--tokenizer {path}: cannot load a tokenizer ({type(exc).__name__}: {exc})"
        ) from exc


def export_cache(cache: Path, out: Path) -> None:
    """Write a plain Parquet (``.parquet``) or Arrow (other suffixes) copy with list columns."""
    from pipeline.cache.reader import export_plain

    export_plain(cache, out)


def open_cache(path: Path) -> Any:
    """A reader over the split directory ``path``; a clear error when given the cache root instead."""
    from pipeline.cache.reader import CacheReader

    path = Path(path)
    if not (path / MANIFEST_NAME).is_file():
        splits = (
            sorted(p.name for p in path.iterdir() if (p / MANIFEST_NAME).is_file()) if path.is_dir() else []
        )
        hint = f" (it holds splits {splits}: pass e.g. {path / splits[0]})" if splits else ""
        raise CacheFormatError(f"{path}: no {MANIFEST_NAME}, not a finished cache split{hint}")
    return CacheReader(path)


def run_inspect(args: argparse.Namespace) -> int:
    """The ``inspect`` command: summary, then ``--sample``, ``--html``, ``--export`` and ``--audit``.

    Returns 0, or 1 when the audit found problems. Errors are ``DistillError`` subclasses.
    """
    from pipeline.inspection.audit import audit
    from pipeline.inspection.html import write_html

    reader = open_cache(args.cache)
    cfg = None
    if getattr(args, "config", None) is not None:
        from pipeline.config import load_config

        cfg = load_config(args.config, overrides=_overrides(getattr(args, "set", None)))
    tokenizer, note = resolve_tokenizer(getattr(args, "tokenizer", None), cfg)
    if note:
        print(note)
    print(format_summary(summarise(reader)))
    if getattr(args, "sample", None):
        print()
        print(sample_table(reader, args.sample, tokenizer))
    if getattr(args, "html", None) is not None:
        n = write_html(reader, args.html, tokenizer)
        print(f"\nwrote {args.html} ({n} samples)")
    if getattr(args, "export", None) is not None:
        export_cache(args.cache, args.export)
        print(f"\nexported {args.export}")
    if not getattr(args, "audit", False):
        return 0
    problems = audit(reader, tokenizer=tokenizer, cfg=cfg)
    print()
    if not problems:
        print("audit: ok")
        return 0
    print(f"audit: {len(problems)} problem(s)")
    for p in problems:
        print(f"  - {p}")
    return 1


def _overrides(items: Any) -> dict[str, Any]:
    """``--set KEY=VALUE`` items (or an already parsed dict) as a dict of YAML-parsed values."""
    if not items:
        return {}
    if isinstance(items, dict):
        return dict(items)
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = yaml.safe_load(value)
    return out


def resolve_tokenizer(path: Path | None, cfg: Any) -> tuple[Any, str]:
    """(tokenizer or None, a note for the user). ``--tokenizer`` wins, then the config's student model.

    The manifest holds no paths (fingerprints are machine-independent), so without either token text
    falls back to ids.
    """
    if path is not None:
        return load_tokenizer(path), ""
    model = getattr(getattr(cfg, "model", None), "model", None)
    if model and Path(model).is_dir():
        try:
            return load_tokenizer(model), ""
        except ConfigError as exc:
            return None, f"note: showing token ids ({exc})"
    return None, "note: showing token ids (pass --tokenizer DIR or --config for token text)"
