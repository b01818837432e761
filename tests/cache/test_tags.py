"""Row tags (the cache stage's teacher-written counts) live in the shard records: a resumed or
multi-rank cache sums to exactly what one clean run records, and rows in = cached + skipped still holds."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from pipeline.cache.format import (
    MANIFEST_NAME,
    PARTS_DIR,
    SKIP_WRITTEN_UNFINISHED,
    TAG_RETOKENIZED,
    TAG_UNFINISHED_KEPT,
    TAG_WRITTEN,
)
from pipeline.cache.manifest import written_counts
from pipeline.cache.writer import CacheWriter, merge_rank_manifests
from tests.cache.test_resume import Item, assert_same_content, make_items, open_writer

N = 36


def tags_of(sid: str) -> tuple[str, ...]:
    """Every third row teacher-written; of those every second retokenized, every third unfinished."""
    i = int(sid.split("-")[1])
    if i % 3:
        return ()
    return (
        (TAG_WRITTEN,)
        + ((TAG_RETOKENIZED,) if i % 6 == 0 else ())
        + ((TAG_UNFINISHED_KEPT,) if i % 9 == 0 else ())
    )


def feed_tagged(writer: CacheWriter, items: list[Item]) -> None:
    done = writer.done_ids()
    for sid, sample in items:
        if sid in done:
            continue
        if sample is None:
            writer.skip(sid, SKIP_WRITTEN_UNFINISHED, f"{sid}: hit max_new_tokens")
        else:
            writer.add(sample, tags_of(sid))


def expected(items: list[Item]) -> dict[str, int]:
    cached = [sid for sid, s in items if s is not None]
    return {
        "written": sum(TAG_WRITTEN in tags_of(s) for s in cached),
        "retokenized": sum(TAG_RETOKENIZED in tags_of(s) for s in cached),
        "unfinished_kept": sum(TAG_UNFINISHED_KEPT in tags_of(s) for s in cached),
        "unfinished_skipped": sum(s is None for _, s in items),
        "unknown_rows": 0,
    }


def clean_run(root: Path, items: list[Item]) -> dict:
    with open_writer(root, shard_bytes=10**9) as w:
        feed_tagged(w, items)
        return w.finalize(rows_in=len(items))


def test_tag_counts_of_a_clean_run(tmp_path: Path) -> None:
    items = make_items(1, N)
    counts = clean_run(tmp_path, items)
    want = expected(items)
    assert want["written"] > want["retokenized"] > 0 and want["unfinished_kept"] > 0
    assert written_counts(counts) == want
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert written_counts(manifest["counts"]) == want
    assert "written_responses" not in json.dumps(manifest["fingerprint"])  # outside the fingerprint
    assert counts["rows_in"] == N == counts["cached"] + counts["skipped"]


@pytest.mark.parametrize("how", ["exception", "abandon"])
def test_an_interrupted_and_resumed_run_counts_every_row_once(tmp_path: Path, how: str) -> None:
    items = make_items(2, N)
    clean_run(tmp_path / "clean", items)
    root = tmp_path / "resumed"
    for stop in (7, 19):  # several small shards are sealed before each stop
        w = open_writer(root)
        if how == "exception":
            with pytest.raises(KeyboardInterrupt), w:
                feed_tagged(w, items[:stop])
                raise KeyboardInterrupt
        else:  # killed: the open shard is lost and redone, its tags with it
            feed_tagged(w, items[:stop])
            w._skip_log.close()
            del w
    with open_writer(root) as w:
        feed_tagged(w, items)
        counts = w.finalize(rows_in=N)
    assert written_counts(counts) == expected(items)
    assert_same_content(tmp_path / "clean", root)  # counts.tags included


def run_rank(root: Path, items: list[Item], rank: int, world: int) -> None:
    mine = items[rank::world]
    w = open_writer(root, rank, world)
    feed_tagged(w, mine)
    w.finalize(rows_in=len(mine))


def test_two_ranks_merge_their_tag_counts(tmp_path: Path) -> None:
    items = make_items(3, N)
    clean_run(tmp_path / "clean", items)
    root = tmp_path / "dp"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=run_rank, args=(root, items, r, 2)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    parts = [json.loads((root / PARTS_DIR / f"rank-0{r}.json").read_text()) for r in range(2)]
    per_rank = [sum(s["tags"].get(TAG_WRITTEN, 0) for s in part["shards"]) for part in parts]
    assert all(n > 0 for n in per_rank)  # each rank's part holds its own share
    counts = merge_rank_manifests(root)
    assert written_counts(counts) == expected(items)
    assert sum(per_rank) == counts["tags"][TAG_WRITTEN]
    assert counts["rows_in"] == N == counts["cached"] + counts["skipped"]
    assert_same_content(tmp_path / "clean", root)


def test_a_shard_adopted_from_the_file_is_counted_as_unknown(tmp_path: Path) -> None:
    items = make_items(4, N)
    with open_writer(tmp_path) as w:
        feed_tagged(w, items)
        w.finalize(rows_in=N)
    part = tmp_path / PARTS_DIR / "rank-00.json"
    rec = json.loads(part.read_text())
    lost = rec["shards"].pop(0)  # as if stopped between renaming the shard and recording it
    part.write_text(json.dumps(rec))
    counts = merge_rank_manifests(tmp_path)
    got = written_counts(counts)
    assert got["unknown_rows"] == lost["rows"] > 0
    assert got["written"] == expected(items)["written"] - lost["tags"].get(TAG_WRITTEN, 0)
    assert counts["cached"] + counts["skipped"] == N
