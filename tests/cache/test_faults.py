"""Faults at the cache format level: swapped shards and an edited digest, a kill while a log is
rewritten, compaction under an open reader, a killed compaction's leftovers, a full disk mid-compaction."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest

from pipeline.cache import compact as compaction
from pipeline.cache.cachedir import SplitDir
from pipeline.cache.compact import compact
from pipeline.cache.format import MANIFEST_NAME, PARTS_DIR
from pipeline.cache.lock import CacheLock
from pipeline.cache.reader import CacheReader
from pipeline.errors import CacheFormatError, CacheLockedError, DiskFullError
from tests.cache.helpers import FINGERPRINT, assert_same_sample
from tests.cache.test_generations import dataset, fresh, incremental, open_writer

EDITED = {"row-001": 101, "row-006": 106}  # two rows whose dataset row changed: new versions


def two_generations(root: Path) -> dict[str, Any]:
    """A cache whose second generation re-cached ``EDITED`` (their first versions superseded)."""
    fresh(root, dataset(10))
    return incremental(root, dataset(10, EDITED))


def _write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))


# -- what the reader serves is what the manifest records ---------------------------------------


def test_swapped_shards_with_their_entries_fixed_are_refused_naming_the_shard(tmp_path: Path) -> None:
    root = tmp_path / "c"
    manifest = two_generations(root)
    gone = manifest["superseded"][0]  # the first version of an edited row, in a generation-0 shard
    newer = next(s for s in manifest["shards"] if s["generation"] == 1)
    a, b = root / gone["shard"], root / newer["file"]
    a_bytes, b_bytes = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_bytes)
    b.write_bytes(a_bytes)
    entries = {s["file"]: s for s in manifest["shards"]}
    ea, eb = entries[a.name], entries[b.name]
    fields = ("rows", "targets", "bytes", "sha256", "digest", "tags")
    swapped_a, swapped_b = {k: eb[k] for k in fields}, {k: ea[k] for k in fields}
    ea.update(swapped_a)
    eb.update(swapped_b)
    _write_manifest(root, manifest)
    with pytest.raises(CacheFormatError) as err:
        CacheReader(root)
    message = str(err.value)
    assert "\n" not in message and "rebuild the cache" in message
    assert message.startswith(f"shard {a.name} in {root}: holds sample ") or a.name in message


def test_an_edited_content_digest_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    manifest = two_generations(root)
    assert len(CacheReader(root)) == 8  # as written, it opens
    manifest["content_digest"] = f"{(int(manifest['content_digest'], 16) + 1) % 2**256:064x}"
    _write_manifest(root, manifest)
    with pytest.raises(CacheFormatError, match=r"content_digest .* does not match the shards") as err:
        CacheReader(root, verify="lazy")
    assert "\n" not in str(err.value) and manifest["superseded"][0]["shard"] in str(err.value)


# -- a kill while a log is rewritten -----------------------------------------------------------


def test_a_kill_while_the_superseded_log_is_rewritten_leaves_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.cache import writer as writer_module

    root = tmp_path / "c"
    two_generations(root)
    log = root / PARTS_DIR / "rank-00.superseded.jsonl"
    before = log.read_text()
    with open(log, "a") as f:
        f.write('{"sample_id": "row-00')  # a torn last line: the next writer rewrites the log
    dumps = json.dumps

    def killed_mid_rewrite(obj: Any, **kw: Any) -> str:
        if isinstance(obj, dict) and "shard" in obj and "reason" in obj:
            raise KeyboardInterrupt  # stands for the kill, at the rewrite of the log
        return dumps(obj, **kw)

    with monkeypatch.context() as m:
        m.setattr(writer_module.json, "dumps", killed_mid_rewrite)
        with pytest.raises(KeyboardInterrupt):
            open_writer(root)
    assert log.read_text().startswith(before)  # never truncated
    incremental(root, dataset(10, EDITED))  # the rerun opens and finishes: no "cached twice"
    assert log.read_text() == before and [p for p in (root / PARTS_DIR).iterdir() if ".tmp" in p.name] == []


# -- compaction under an open reader -----------------------------------------------------------


def test_a_reader_keeps_serving_the_snapshot_it_opened_across_a_compaction(tmp_path: Path) -> None:
    root = tmp_path / "c"
    two_generations(root)
    keep = [f"row-{i:03d}" for i in range(0, 10, 2)]  # compaction drops half the rows
    reader = CacheReader(root, verify="lazy")
    copy = pickle.loads(pickle.dumps(reader))  # as a dataloader worker gets it, before it reads
    shutil.copytree(root, tmp_path / "before")
    expected = CacheReader(tmp_path / "before")
    compact(root, keep)
    assert len(CacheReader(root)) == 4  # the new cache is in place (row-008 is a skip)
    for sid in reader.sample_ids:  # every row of the snapshot, whole and the right one
        assert_same_sample(reader.get(sid), expected.get(sid))
    reader.batch(reader.sample_ids)
    # A copy that maps the files again after the swap serves a row only if it is that row; otherwise
    # one line says the cache changed under it, never a wrong row or an IndexError.
    for sid in copy.sample_ids:
        try:
            got = copy.get(sid)
        except CacheFormatError as err:
            assert "the cache changed since this reader opened it" in str(err) and "\n" not in str(err)
        else:
            assert_same_sample(got, expected.get(sid))


# -- a killed compaction's leftovers and the writer lock ----------------------------------------


def _killed_before_swap(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run a compaction that is killed after its copy is complete, before the swap."""

    def killed(new: Path, root: Path) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(compaction, "_swap", killed)
        with CacheLock(root), pytest.raises(KeyboardInterrupt):
            compact(root, [f"row-{i:03d}" for i in range(10)])
    assert (SplitDir(root).building_dir / MANIFEST_NAME).is_file()


def test_a_deleted_split_is_not_revived_from_a_killed_compactions_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.teacher.stage import writer_lock

    root = tmp_path / "c"
    two_generations(root)
    _killed_before_swap(root, monkeypatch)
    shutil.rmtree(root)  # the user deletes the split to rebuild it
    with writer_lock(root):
        assert not (root / MANIFEST_NAME).exists() and not list(root.glob("shard-*"))
        assert not SplitDir(root).building_dir.exists()
        with pytest.raises(CacheLockedError):
            CacheLock(root).acquire()  # the lock this run holds is still there and held


def test_a_compaction_stopped_between_its_renames_is_finished_and_keeps_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.teacher.stage import writer_lock

    root = tmp_path / "c"
    two_generations(root)
    _killed_before_swap(root, monkeypatch)
    built = json.loads((SplitDir(root).building_dir / MANIFEST_NAME).read_text())
    os.replace(root, compaction._old_dir(root))  # the fallback swap's first rename, then the kill
    with writer_lock(root):
        assert json.loads((root / MANIFEST_NAME).read_text()) == built
        assert len(CacheReader(root, FINGERPRINT)) == 8
        with pytest.raises(CacheLockedError):
            CacheLock(root).acquire()
    assert not SplitDir(root).building_dir.exists() and not compaction._old_dir(root).exists()


def test_compaction_keeps_the_writer_lock_held(tmp_path: Path) -> None:
    root = tmp_path / "c"
    two_generations(root)
    with CacheLock(root):
        compact(root, [f"row-{i:03d}" for i in range(10)])
        with pytest.raises(CacheLockedError):
            CacheLock(root).acquire()  # a second writer is refused until this run ends
    CacheLock(root).acquire().release()


# -- a full disk mid-compaction ------------------------------------------------------------------


def test_a_full_disk_while_compacting_is_one_line_and_the_cache_stays_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow as pa

    root = tmp_path / "c"
    two_generations(root)
    manifest = (root / MANIFEST_NAME).read_bytes()
    new_file = pa.ipc.new_file

    class Full:
        def __init__(self, inner: Any):
            self.inner = inner

        def write_batch(self, batch: Any) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self) -> None:
            self.inner.close()

    keep = [f"row-{i:03d}" for i in range(10)]
    with monkeypatch.context() as m:
        m.setattr(pa.ipc, "new_file", lambda *a, **k: Full(new_file(*a, **k)))
        with CacheLock(root), pytest.raises(DiskFullError) as err:
            compact(root, keep)
    message = str(err.value)
    assert message.startswith(
        f"{root} (compacting into {SplitDir(root).building_dir.name}): no space left on device"
    )
    assert "the cache is intact as it was" in message and "\n" not in message
    assert not SplitDir(root).building_dir.exists()
    assert (root / MANIFEST_NAME).read_bytes() == manifest and len(CacheReader(root)) == 8
    with CacheLock(root):
        counts = compact(root, keep)  # the rerun completes
    assert (
        counts["cached"] == 8 and json.loads((root / MANIFEST_NAME).read_text())["storage"]["superseded"] == 0
    )
