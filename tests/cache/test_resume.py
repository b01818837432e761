"""Interrupted and data-parallel writers: the finished cache holds the same content as one clean run."""

from __future__ import annotations

import json
import multiprocessing
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cache.format import MANIFEST_NAME, PARTS_DIR, CachedSample
from pipeline.cache.manifest import manifest_content
from pipeline.cache.reader import CacheReader
from pipeline.cache.writer import CacheWriter, merge_rank_manifests
from pipeline.errors import CacheFormatError
from tests.cache.helpers import FINGERPRINT, assert_same_sample, random_sample

K, VOCAB = 8, 5000
Item = tuple[str, CachedSample | None]  # (sample_id, sample) or (sample_id, None): skipped


def make_items(seed: int, count: int) -> list[Item]:
    rng = np.random.default_rng(seed)
    items: list[Item] = []
    for i in range(count):
        sid = f"row-{i:03d}"
        items.append(
            (sid, None) if i % 5 == 3 else (sid, random_sample(rng, sid, int(rng.integers(0, 30)), K, VOCAB))
        )
    return items


def open_writer(root: Path, rank: int = 0, world: int = 1, shard_bytes: int = 4000) -> CacheWriter:
    return CacheWriter(
        root,
        fingerprint=FINGERPRINT,
        top_k=K,
        vocab_size=VOCAB,
        shard_bytes=shard_bytes,
        rank=rank,
        world_size=world,
        batch_bytes=1500,
    )


def feed(writer: CacheWriter, items: list[Item]) -> None:
    done = writer.done_ids()
    for sid, sample in items:
        if sid in done:
            continue
        if sample is None:
            writer.skip(sid, "missing_image", f"{sid}.png not found")
        else:
            writer.add(sample)


def clean_run(root: Path, items: list[Item]) -> dict:
    with open_writer(root, shard_bytes=10**9) as w:
        feed(w, items)
        w.finalize(rows_in=len(items))
    return json.loads((root / MANIFEST_NAME).read_text())


def assert_same_content(a: Path, b: Path) -> None:
    ma, mb = (json.loads((p / MANIFEST_NAME).read_text()) for p in (a, b))
    assert manifest_content(ma) == manifest_content(mb)
    ra, rb = (
        CacheReader(a, expected_fingerprint=FINGERPRINT),
        CacheReader(b, expected_fingerprint=FINGERPRINT),
    )
    assert sorted(ra.sample_ids) == sorted(rb.sample_ids)
    for sid in ra.sample_ids:
        assert_same_sample(ra.get(sid), rb.get(sid))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 1000),
    stops=st.lists(st.integers(0, 24), min_size=1, max_size=3),
    how=st.sampled_from(["abandon", "abandon_and_delete_tmp", "exception", "lost_part_record"]),
)
def test_resume_after_interruptions_gives_the_same_content(seed: int, stops: list[int], how: str) -> None:
    items = make_items(seed, 24)
    with tempfile.TemporaryDirectory() as tmp:
        clean, resumed = Path(tmp) / "clean", Path(tmp) / "resumed"
        clean_run(clean, items)
        for stop in sorted(stops):
            w = open_writer(resumed)
            if how == "exception":
                with pytest.raises(KeyboardInterrupt), w:
                    feed(w, items[:stop])
                    raise KeyboardInterrupt
            else:
                feed(w, items[:stop])
                w._skip_log.close()  # a killed process leaves no open handles; nothing else is cleaned up
                del w
                if how == "abandon_and_delete_tmp":
                    for tmp_file in resumed.glob("*.tmp*"):
                        tmp_file.unlink()
                if how == "lost_part_record":  # stopped between renaming a shard and recording it
                    part = resumed / PARTS_DIR / "rank-00.json"
                    rec = json.loads(part.read_text())
                    rec["shards"] = rec["shards"][:-1]
                    part.write_text(json.dumps(rec))
        assert not (resumed / MANIFEST_NAME).exists()
        with open_writer(resumed) as w:
            feed(w, items)
            counts = w.finalize(rows_in=len(items))
        assert counts["cached"] + counts["skipped"] == len(items)
        assert counts["skipped_by_reason"] == {"missing_image": sum(s is None for _, s in items)}
        assert_same_content(clean, resumed)


def test_rows_in_must_reconcile(tmp_path: Path) -> None:
    items = make_items(0, 10)
    with open_writer(tmp_path) as w:
        feed(w, items[:7])
        with pytest.raises(
            CacheFormatError, match=r"rows in \(10\) != reused \(0\) \+ cached \(.*\) \+ skipped .*: 3 rows"
        ):
            w.finalize(rows_in=10)
    assert not (tmp_path / MANIFEST_NAME).exists()
    with open_writer(tmp_path) as w:  # the missing rows can still be added afterwards
        feed(w, items)
        assert w.finalize(rows_in=10)["cached"] == 8


def run_rank(root: Path, items: list[Item], rank: int, world: int, stop: int | None = None) -> None:
    mine = items[rank::world]
    w = open_writer(root, rank, world)
    feed(w, mine[:stop] if stop is not None else mine)
    if stop is None:
        w.finalize(rows_in=len(mine))
    else:
        w._skip_log.close()


def test_multi_rank_writers_merge_to_the_single_writer_content(tmp_path: Path) -> None:
    items = make_items(5, 30)
    clean_run(tmp_path / "clean", items)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=run_rank, args=(tmp_path / "dp", items, r, 3)) for r in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert not (tmp_path / "dp" / MANIFEST_NAME).exists()
    counts = merge_rank_manifests(tmp_path / "dp")
    assert counts["rows_in"] == 30 and counts["cached"] + counts["skipped"] == 30
    assert {p.name[:9] for p in (tmp_path / "dp").glob("shard-*.arrow")} == {
        "shard-r00",
        "shard-r01",
        "shard-r02",
    }
    assert_same_content(tmp_path / "clean", tmp_path / "dp")


def test_resume_with_another_world_size(tmp_path: Path) -> None:
    items = make_items(7, 30)
    clean_run(tmp_path / "clean", items)
    root = tmp_path / "dp"
    for rank in range(3):  # three ranks stopped part-way
        run_rank(root, items, rank, 3, stop=4 + rank)
    for rank in range(2):  # two ranks finish: each skips what any rank already holds
        run_rank(root, items, rank, 2)
    counts = merge_rank_manifests(root)
    assert counts["rows_in"] == 30 and counts["cached"] + counts["skipped"] == 30
    assert_same_content(tmp_path / "clean", root)
    # a single process reopening the finished cache finds nothing to do and writes the same manifest
    with open_writer(root) as w:
        assert w.done_ids() == {sid for sid, _ in items}
        w.finalize(rows_in=30)
    assert_same_content(tmp_path / "clean", root)


def test_merge_refuses_a_sample_cached_twice(tmp_path: Path) -> None:
    items = make_items(9, 6)
    writers = [open_writer(tmp_path, rank, 2) for rank in range(2)]  # opened together, as under torchrun
    for w in writers:  # both ranks write everything: a broken partition
        for _, s in items:
            if s is not None:
                w.add(s)
        w.finalize()
    with pytest.raises(CacheFormatError, match="cached twice"):
        merge_rank_manifests(tmp_path)
