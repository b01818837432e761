"""A full disk at any write of the cache writer: one line naming the directory and what it holds, and
a rerun after freeing space gives the same cache as a clean run, with no temporary file left."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import pipeline.cache.manifest as manifest_module
from pipeline.cache.diskfull import disk_full_as_error
from pipeline.cache.format import MANIFEST_NAME, PARTS_DIR
from pipeline.errors import DiskFullError
from tests.cache.test_resume import assert_same_content, clean_run, feed, make_items, open_writer

N_ITEMS = 24


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _Injector:
    """Raises ENOSPC at the ``nth`` use of one write point, once."""

    def __init__(self, point: str, nth: int):
        self.point, self.nth, self.seen = point, nth, 0

    def fire(self, point: str) -> None:
        if point == self.point:
            self.seen += 1
            if self.seen == self.nth:
                raise _enospc()


class _ShardWriter:
    """The Arrow file writer of a shard, with ENOSPC at a batch write or at the footer (seal)."""

    def __init__(self, inner: Any, inject: _Injector):
        self.inner, self.inject = inner, inject

    def write_batch(self, batch: pa.RecordBatch) -> None:
        self.inject.fire("shard write")
        self.inner.write_batch(batch)

    def close(self) -> None:
        self.inject.fire("seal")
        self.inner.close()


class _JsonFile:
    """A temporary JSON file whose first write fails when its name is the injected point's."""

    def __init__(self, inner: Any, point: str, inject: _Injector):
        self.inner, self.point, self.inject = inner, point, inject

    def write(self, text: str) -> int:
        self.inject.fire(self.point)
        self.point = ""  # only the file's first write
        return self.inner.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __enter__(self) -> _JsonFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.close()


def _install(monkeypatch: pytest.MonkeyPatch, inject: _Injector) -> None:
    new_file = pa.ipc.new_file
    monkeypatch.setattr(pa.ipc, "new_file", lambda *a, **k: _ShardWriter(new_file(*a, **k), inject))

    def json_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        name = Path(path).name
        point = (
            "part record" if name.startswith(".rank-") else "manifest" if name.startswith(".manifest") else ""
        )
        return _JsonFile(open(path, *args, **kwargs), point, inject)

    monkeypatch.setattr(manifest_module, "open", json_open, raising=False)


@pytest.mark.parametrize(
    ("point", "nth"),
    [("shard write", 3), ("seal", 2), ("part record", 3), ("manifest", 1)],
)
def test_full_disk_is_one_line_and_the_rerun_equals_a_clean_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str, nth: int
) -> None:
    items = make_items(7, N_ITEMS)
    clean_run(tmp_path / "clean", items)
    root = tmp_path / "full"
    inject = _Injector(point, nth)
    with monkeypatch.context() as m:
        _install(m, inject)
        with pytest.raises(DiskFullError) as info, disk_full_as_error(root), open_writer(root) as w:
            feed(w, items)
            w.finalize(rows_in=len(items))
    assert inject.seen >= nth  # the failure came from the injected point
    message = f"error: DiskFullError: {info.value}"
    assert "\n" not in message
    assert message.startswith(f"error: DiskFullError: {root}: no space left on device ([Errno 28]")
    assert "free space and run the same command again: it resumes from there" in message
    shards = sorted(root.glob("shard-*.arrow"))
    rows = sum(pa.ipc.open_file(p).read_all().num_rows for p in shards)
    assert f"written so far: {rows} rows in {len(shards)} complete shards" in message
    assert not (root / MANIFEST_NAME).exists()
    # The rerun after space is freed: every row once, the same content as a clean run, nothing stray.
    with open_writer(root) as w:
        feed(w, items)
        counts = w.finalize(rows_in=len(items))
    assert counts["cached"] + counts["skipped"] == N_ITEMS
    assert_same_content(tmp_path / "clean", root)
    leftovers = [p.name for p in [*root.iterdir(), *(root / PARTS_DIR).iterdir()] if ".tmp" in p.name]
    assert leftovers == []


def test_other_os_errors_keep_their_type(tmp_path: Path) -> None:
    with pytest.raises(PermissionError), disk_full_as_error(tmp_path):
        raise PermissionError(errno.EACCES, "denied")


def test_a_killed_manifest_write_leaves_no_temporary_file_after_the_rerun(tmp_path: Path) -> None:
    """A SIGKILL while ``manifest.json`` (or a part record) is being written leaves its temporary file;
    the rerun that finishes the cache removes it."""
    items = make_items(3, 12)
    root = tmp_path / "c"
    clean_run(tmp_path / "clean", items)
    with open_writer(root) as w:
        feed(w, items)
        w.finalize(rows_in=len(items))
    (root / MANIFEST_NAME).unlink()  # killed before the rename: only the temporary file is there
    (root / f".{MANIFEST_NAME}.tmp-4242").write_text('{"format": "vlm-dis')
    (root / PARTS_DIR / ".rank-00.json.tmp-4242").write_text("{")
    with open_writer(root) as w:
        feed(w, items)
        w.finalize(rows_in=len(items))
    assert sorted(p.name for p in root.rglob("*tmp*")) == []
    assert_same_content(tmp_path / "clean", root)
