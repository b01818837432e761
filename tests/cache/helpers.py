"""Random valid cache samples and comparisons shared by the cache tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.cache.format import CachedSample, Layout
from pipeline.cache.quant import LOG_FLOOR, LOG_STEP

FINGERPRINT: dict[str, Any] = {
    "teacher": {"name": "tiny-teacher", "weights_sha256": "ab" * 32},
    "tokenizer_sha256": "cd" * 32,
    "encoding": {"template": "qwen2_5_vl", "max_length": 2048, "max_pixels": 200704},
    "data_sha256": "ef" * 32,
    "top_k": 8,
    "temperature": 1.0,
    "dtype": "float32",
}


def random_sample(
    rng: np.random.Generator, sample_id: str, n: int, k: int, vocab: int, *, odd_targets: bool = True
) -> CachedSample:
    """A valid sample with ``n`` targets: distinct ids per position, logprobs of a softmax whose mass
    outside the top-k is the tail (sometimes empty), targets mostly the top-1 and, with
    ``odd_targets``, sometimes another entry, an id outside the top-k or a logprob that differs."""
    ids = np.empty((n, k), np.int64)
    for i in range(n):
        ids[i] = rng.choice(vocab, size=k, replace=False)
    scale = rng.uniform(0.2, 6.0, size=(n, 1))
    logits = -scale * np.log(np.arange(1, k + 1))[None, :] + rng.normal(0, 0.5, size=(n, k))
    tail_mass = np.where(rng.random(n) < 0.1, 0.0, 10.0 ** rng.uniform(-9, -0.1, size=n))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = p / p.sum(axis=1, keepdims=True) * (1 - tail_mass)[:, None]
    lp = -np.sort(-np.log(p), axis=1)
    with np.errstate(divide="ignore"):
        tail = np.log(tail_mass)
    if n and k > 1 and rng.random() < 0.3:  # an exactly-zero entry (-inf), allowed at the bottom
        lp[0, -1] = -np.inf
    targets = ids[:, 0].copy()
    target_lp = lp[:, 0].astype(np.float32).copy()
    if odd_targets:
        for i in range(n):
            u = rng.random()
            if u < 0.2:  # another top-k entry
                j = int(rng.integers(k))
                targets[i], target_lp[i] = ids[i, j], np.float32(lp[i, j])
            elif u < 0.3 and k < vocab:  # not in the top-k: escaped with its own logprob
                while (cand := int(rng.integers(vocab))) in set(ids[i].tolist()):
                    pass
                targets[i], target_lp[i] = cand, np.float32(-30.0 + rng.random())
            elif u < 0.35:  # in the top-k but a different logprob (e.g. another numeric path)
                target_lp[i] = np.float32(lp[i, 0] - 1e-3)
    start = int(rng.integers(1, 20))
    positions = start + np.sort(rng.choice(4 * n + 1, size=n, replace=False)) if n else np.empty(0, np.int64)
    return CachedSample(
        sample_id=sample_id,
        encoding_hash=f"{int(rng.integers(2**62)):016x}" * 4,
        num_tokens=int(positions[-1]) + 1 + int(rng.integers(3)) if n else start,
        positions=positions.astype(np.int64),
        target_ids=targets,
        topk_ids=ids,
        topk_logprobs=lp.astype(np.float32),
        tail_logprobs=tail.astype(np.float32),
        target_logprobs=target_lp,
    )


def assert_same_sample(a: CachedSample, b: CachedSample) -> None:
    """Bitwise equality of every field (float comparisons by bits, so -inf and -0.0 count)."""
    assert a.sample_id == b.sample_id and a.encoding_hash == b.encoding_hash and a.num_tokens == b.num_tokens
    for name in ("positions", "target_ids", "topk_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    for name in ("topk_logprobs", "tail_logprobs", "target_logprobs"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == np.float32, name
        np.testing.assert_array_equal(x.view(np.uint32), y.view(np.uint32), err_msg=name)


def assert_decoded_close(orig: CachedSample, dec: CachedSample, layout: Layout) -> None:
    """The quantized contract: ids lossless as a set per position, order by descending decoded logprob
    (ties by id), each value within one cell of the sqrt(p) quantiser, targets and tail likewise."""
    assert dec.sample_id == orig.sample_id and dec.encoding_hash == orig.encoding_hash
    assert dec.num_tokens == orig.num_tokens
    np.testing.assert_array_equal(dec.positions, orig.positions)
    np.testing.assert_array_equal(dec.target_ids, orig.target_ids)
    for arr, dtype in (
        (dec.topk_ids, np.int64),
        (dec.topk_logprobs, np.float32),
        (dec.tail_logprobs, np.float32),
    ):
        assert arr.dtype == dtype
    n, k = orig.topk_ids.shape
    assert dec.topk_ids.shape == (n, k)
    np.testing.assert_array_equal(np.sort(dec.topk_ids, axis=1), np.sort(orig.topk_ids, axis=1))
    if k > 1:
        d = np.diff(dec.topk_logprobs, axis=1)
        assert (d <= 0).all() or n == 0
        ties = d == 0
        assert (np.diff(dec.topk_ids, axis=1)[ties] > 0).all()
    a, b = np.argsort(orig.topk_ids, axis=1), np.argsort(dec.topk_ids, axis=1)
    assert_within_cell(
        np.take_along_axis(orig.topk_logprobs, a, 1), np.take_along_axis(dec.topk_logprobs, b, 1), layout
    )
    assert_within_cell(orig.tail_logprobs, dec.tail_logprobs, layout)
    # A target is either the decoded entry with its id, or escaped and exact.
    in_topk = (dec.topk_ids == dec.target_ids[:, None]).any(axis=1)
    exact = dec.target_logprobs.view(np.uint32) == orig.target_logprobs.view(np.uint32)
    table = layout.quantizer.table()
    assert (exact | (in_topk & np.isin(dec.target_logprobs, table))).all()


def assert_within_cell(exact: np.ndarray, decoded: np.ndarray, layout: Layout) -> None:
    """The quantiser's per-entry guarantee: zero stays zero; above p0 = (s/2)^2 the decoded sqrt(p) is
    within one cell; below it, within one 4-nat log cell (or both in the lowest, open, cell)."""
    q = layout.quantizer
    exact, decoded = exact.astype(np.float64), decoded.astype(np.float64)
    assert (np.isneginf(exact) == np.isneginf(decoded)).all()
    finite = ~np.isneginf(exact)
    e, d = exact[finite], decoded[finite]
    small = e < 2 * np.log(q.step / 2)
    assert (np.abs(np.sqrt(np.exp(e[~small])) - np.sqrt(np.exp(d[~small]))) <= q.max_width + 1e-6).all()
    floor = (e[small] < LOG_FLOOR) & (d[small] < LOG_FLOOR + LOG_STEP)  # the open lowest cell
    assert ((np.abs(e[small] - d[small]) <= LOG_STEP) | floor).all()


def kl_rows(orig: CachedSample, dec: CachedSample) -> np.ndarray:
    """float64 [n] KL(orig || dec renormalised) over top-k + tail."""
    from scipy.special import logsumexp

    a, b = np.argsort(orig.topk_ids, axis=1), np.argsort(dec.topk_ids, axis=1)
    p = np.concatenate([np.take_along_axis(orig.topk_logprobs, a, 1), orig.tail_logprobs[:, None]], 1).astype(
        float
    )
    q = np.concatenate([np.take_along_axis(dec.topk_logprobs, b, 1), dec.tail_logprobs[:, None]], 1).astype(
        float
    )
    q = q - logsumexp(q, axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        return np.where(np.isneginf(p), 0.0, np.exp(p) * (p - q)).sum(axis=1)


def downgrade_to_first_format(root: Any, dataset_sha256: str = "12" * 32) -> None:
    """Turn a finished single-generation cache into what the writer made before rows were keyed one
    by one: no ``row_digest`` column, ``dataset_sha256`` in every fingerprint (manifest, parts, shard
    metadata), no generations, superseded records or skip generations."""
    import json
    from pathlib import Path

    import pyarrow as pa

    from pipeline.cache.format import FINGERPRINT_KEY, MANIFEST_NAME, PARTS_DIR
    from pipeline.cache.shards import digest_hex, scan_shard

    root = Path(root)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    fingerprint = {**manifest["fingerprint"], "dataset_sha256": dataset_sha256}
    shards = []
    for rec in manifest["shards"]:
        path = root / rec["file"]
        with pa.memory_map(str(path)) as src:
            table = pa.ipc.open_file(src).read_all()
        table = table.drop_columns(["row_digest"])
        meta = dict(table.schema.metadata)
        meta[FINGERPRINT_KEY] = json.dumps(fingerprint, sort_keys=True).encode()
        table = table.replace_schema_metadata(meta)
        options = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", compression_level=1))
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema, options=options) as w:
            for batch in table.to_batches():
                w.write_batch(batch)
        shards.append({**scan_shard(path), "tags": rec.get("tags", {})})
    for key in ("generations", "superseded", "storage"):
        manifest.pop(key, None)
    # Its digest as that writer computed it: over the rows as stored then (no row_digest column).
    content = digest_hex(sum(int(s["digest"], 16) for s in shards))
    manifest.update(fingerprint=fingerprint, shards=shards, content_digest=content)
    for rec in manifest["skipped"]:
        rec.pop("row_digest", None)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))
    for part in (root / PARTS_DIR).glob("rank-*.json"):
        p = json.loads(part.read_text())
        for key in ("generation", "reused", "dataset"):
            p.pop(key, None)
        p.update(fingerprint=fingerprint, shards=shards)
        part.write_text(json.dumps(p))
    for log in (root / PARTS_DIR).glob("rank-*.skips.jsonl"):
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        log.write_text(
            "".join(json.dumps({k: r[k] for k in ("sample_id", "reason", "detail")}) + "\n" for r in lines)
        )
