"""Incremental caches at the writer level: generations, superseded rows, old caches, compaction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache.compact import compact
from pipeline.cache.format import MANIFEST_NAME, SUPERSEDED_CHANGED, CachedSample
from pipeline.cache.manifest import manifest_content
from pipeline.cache.reader import CacheReader
from pipeline.cache.writer import CacheWriter
from pipeline.errors import CacheFormatError
from tests.cache.helpers import FINGERPRINT, assert_same_sample, downgrade_to_first_format, random_sample

K, VOCAB = 8, 5000
SKIPPED = {"row-003", "row-008"}


def sample(sid: str, seed: int) -> CachedSample:
    rng = np.random.default_rng(seed)
    s = random_sample(rng, sid, int(rng.integers(1, 20)), K, VOCAB)
    s.row_digest = f"{seed:064x}"
    return s


def open_writer(root: Path) -> CacheWriter:
    return CacheWriter(
        root, fingerprint=FINGERPRINT, top_k=K, vocab_size=VOCAB, shard_bytes=3000, batch_bytes=1000
    )


def dataset(n: int, edited: dict[str, int] | None = None) -> dict[str, CachedSample | None]:
    """``row-000`` .. : a sample per row (seed = its index, or ``edited``'s), None for skipped rows."""
    edited = edited or {}
    out: dict[str, CachedSample | None] = {}
    for i in range(n):
        sid = f"row-{i:03d}"
        out[sid] = None if sid in SKIPPED else sample(sid, edited.get(sid, i))
    return out


def fresh(root: Path, rows: dict[str, CachedSample | None]) -> dict:
    with open_writer(root) as w:
        for sid, s in rows.items():
            w.add(s) if s is not None else w.skip(sid, "missing_image", f"{sid}.png")
        w.finalize(rows_in=len(rows))
    return json.loads((root / MANIFEST_NAME).read_text())


def incremental(root: Path, rows: dict[str, CachedSample | None]) -> dict:
    """What the cache stage does: reuse unchanged rows, supersede changed ones, retry earlier skips."""
    with open_writer(root) as w:
        live, skips, reused = w.live_rows(), w.live_skips(), 0
        for sid, s in rows.items():
            if sid in skips:
                w.retry(sid)
            if s is None:
                w.skip(sid, "missing_image", f"{sid}.png")
            elif sid in live and live[sid].row_digest == s.row_digest:
                reused += 1
            else:
                if sid in live:
                    w.supersede(sid, SUPERSEDED_CHANGED)
                w.add(s)
        w.finalize(rows_in=len(rows), reused=reused)
    return json.loads((root / MANIFEST_NAME).read_text())


def assert_same_cache(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / MANIFEST_NAME).read_text()) for p in (a, b))
    assert manifest_content(ma) == manifest_content(mb)
    ra, rb = CacheReader(a, FINGERPRINT), CacheReader(b, FINGERPRINT)
    assert sorted(ra.sample_ids) == sorted(rb.sample_ids) and len(set(ra.sample_ids)) == len(ra)
    for sid in rb.sample_ids:
        assert_same_sample(ra.get(sid), rb.get(sid))
        assert ra.get(sid).row_digest == rb.get(sid).row_digest


def test_a_grown_and_edited_dataset_is_cached_incrementally_and_compacts_to_a_fresh_cache(
    tmp_path: Path,
) -> None:
    root = tmp_path / "inc"
    fresh(root, dataset(10))
    grown = dataset(13, edited={"row-002": 102})
    m = incremental(root, grown)
    assert m["generations"][-1] | {"dataset": None} == {
        "generation": 1,
        "rows_in": 13,
        "reused": 7,
        "new": 3,
        "changed": 1,
        "skipped": 2,
        "superseded": 1,
        "dataset": None,
    }
    assert m["storage"] == {"stored_rows": 12, "superseded": 1}
    assert m["counts"]["cached"] == 11 and m["counts"]["skipped"] == 2
    assert [(r["sample_id"], r["reason"]) for r in m["superseded"]] == [("row-002", SUPERSEDED_CHANGED)]
    fresh(tmp_path / "fresh", grown)
    assert_same_cache(root, tmp_path / "fresh")
    # the superseded version is stored but not live; the reader serves the new one
    assert CacheReader(root).get("row-002").row_digest == f"{102:064x}"

    # rows 0 and 3 leave the dataset: compaction drops them and the superseded version
    kept = {sid: s for sid, s in grown.items() if sid not in ("row-000", "row-003")}
    compact(root, kept)
    m = json.loads((root / MANIFEST_NAME).read_text())
    assert m["storage"] == {"stored_rows": 10, "superseded": 0} and len(m["generations"]) == 1
    assert not list(tmp_path.glob(".inc.*"))
    fresh(tmp_path / "fresh-kept", kept)
    assert_same_cache(root, tmp_path / "fresh-kept")


def test_rerunning_an_unchanged_dataset_reuses_every_row(tmp_path: Path) -> None:
    rows = dataset(10)
    before = fresh(tmp_path, rows)
    after = incremental(tmp_path, rows)
    assert after["generations"][-1]["reused"] == 8 and after["generations"][-1]["new"] == 0
    assert manifest_content(after) == manifest_content(before)


def test_a_kill_after_superseding_resumes_to_the_same_content(tmp_path: Path) -> None:
    root = tmp_path / "inc"
    fresh(root, dataset(10))
    grown = dataset(12, edited={"row-004": 104})
    w = open_writer(root)
    w.supersede("row-004", SUPERSEDED_CHANGED)
    del w  # stopped before the new version was written: the row is neither live nor skipped
    w2 = open_writer(root)
    assert "row-004" not in w2.done_ids() and "row-004" not in w2.live_rows() and w2.generation == 1
    del w2
    m = incremental(root, grown)
    assert m["generations"][-1]["changed"] == 1 and len(m["generations"]) == 2
    fresh(tmp_path / "fresh", grown)
    assert_same_cache(root, tmp_path / "fresh")


def test_two_live_versions_of_a_row_are_refused(tmp_path: Path) -> None:
    fresh(tmp_path, dataset(4))
    with open_writer(tmp_path) as w:
        with pytest.raises(ValueError, match="already cached"):
            w.add(sample("row-001", 99))  # a changed row must be superseded first
        w.finalize(rows_in=4, reused=4)
    (tmp_path / "parts" / "rank-00.superseded.jsonl").write_text(
        json.dumps({"sample_id": "row-001", "shard": "shard-r00-99999.arrow", "generation": 1}) + "\n"
    )
    with pytest.raises(CacheFormatError, match="superseded records name rows no shard holds"):
        open_writer(tmp_path)


def test_a_cache_of_the_first_format_opens_extends_in_place_and_compacts(tmp_path: Path) -> None:
    root = tmp_path / "old"
    fresh(root, dataset(10))
    downgrade_to_first_format(root)
    old = CacheReader(root, FINGERPRINT)  # the dataset hash is a record: no mismatch
    assert len(old) == 8 and old.get("row-001").row_digest == ""
    grown = dataset(12)
    with open_writer(root) as w:
        live = w.live_rows()
        assert w.generation == 1 and all(r.row_digest == "" for r in live.values())
        for sid in ("row-010", "row-011"):
            w.add(grown[sid])  # rows without a digest are compared by encoding hash (the stage's job)
        for sid in SKIPPED:
            w.retry(sid)
            w.skip(sid, "missing_image", f"{sid}.png")
        w.finalize(rows_in=12, reused=8)
    m = json.loads((root / MANIFEST_NAME).read_text())
    assert [g["generation"] for g in m["generations"]] == [0, 1]
    assert m["generations"][0]["dataset"] == {"sha256": "12" * 32}
    assert "dataset_sha256" not in m["fingerprint"]
    reader = CacheReader(root, FINGERPRINT)
    assert len(reader) == 10
    compact(root, grown)
    fresh(tmp_path / "fresh", grown)
    a, b = CacheReader(root, FINGERPRINT), CacheReader(tmp_path / "fresh", FINGERPRINT)
    assert sorted(a.sample_ids) == sorted(b.sample_ids)
    for sid in b.sample_ids:
        assert_same_sample(a.get(sid), b.get(sid))  # bitwise; the old rows' digests stay unknown
