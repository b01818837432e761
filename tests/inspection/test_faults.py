"""``distill inspect`` on caches that changed under it, and its exports when something goes wrong.

A cache that grew a generation holds superseded rows: the old version of a row whose dataset row
changed (a new version follows) or became unusable (a skip follows). The audit and every export read
the live rows only, one per sample_id. An export never lands inside the cache, and a full disk while
writing it is one line that leaves the old file as it was. The HTML report escapes every value.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import pipeline.cache.export as export_module
from pipeline.cache.format import SUPERSEDED_CHANGED, SUPERSEDED_UNUSABLE, CachedSample
from pipeline.cache.reader import CacheReader
from pipeline.cache.writer import CacheWriter
from pipeline.cli import main
from pipeline.data import Row
from pipeline.inspection.command import run_inspect
from tests.inspection.test_audit import N_TARGETS, PLACEHOLDERS, VOCAB, K, make_sample

ROOT = Path(__file__).resolve().parents[2]
N_ROWS = 10
FP = {"encoding": {"placeholder_ids": PLACEHOLDERS}, "top_k": K}


def _sample(sid: str, seed: int) -> CachedSample:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 400, N_TARGETS)
    return make_sample(sid, targets, targets, rng, encoding_hash=f"{seed:064x}")


def _writer(root: Path) -> CacheWriter:
    return CacheWriter(root, fingerprint=FP, top_k=K, vocab_size=VOCAB, shard_bytes=4000, batch_bytes=1500)


def grown_cache(root: Path, changed: bool = True, unusable: bool = True) -> Path:
    """``N_ROWS`` rows, then a second generation in which ``s01`` changed and ``s02`` became unusable."""
    with _writer(root) as w:
        for i in range(N_ROWS):
            w.add(_sample(f"s{i:02d}", i))
        w.finalize(rows_in=N_ROWS)
    with _writer(root) as w:
        if changed:
            w.supersede("s01", SUPERSEDED_CHANGED)
            w.add(_sample("s01", 101))
        if unusable:
            w.supersede("s02", SUPERSEDED_UNUSABLE)
            w.skip("s02", "missing_image", "s02.png")
        w.finalize(rows_in=N_ROWS, reused=N_ROWS - changed - unusable)
    return root


def _exported_ids(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        return pq.read_table(path).column("sample_id").to_pylist()
    if path.suffix == ".arrow":
        with pa.ipc.open_stream(str(path)) as stream:
            return stream.read_all().column("sample_id").to_pylist()
    return [json.loads(line)["sample_id"] for line in path.read_text().splitlines()]


def _exported_targets(path: Path, sample_id: str) -> list[int]:
    table = pq.read_table(path)
    i = table.column("sample_id").to_pylist().index(sample_id)
    return table.column("target_ids")[i].as_py()


def test_audit_of_a_cache_with_rows_superseded_as_unusable_and_changed_reads_the_live_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = grown_cache(tmp_path / "train")
    assert run_inspect(root, audit=True) == 0
    out = capsys.readouterr().out
    assert "audit: ok" in out and "1 superseded" not in out.split("audit:")[1]
    assert re.search(r"history: 2 generations, 11 stored rows, 2 superseded", out), out


@pytest.mark.parametrize("suffix", [".parquet", ".arrow", ".jsonl"])
@pytest.mark.parametrize("kind", ["changed", "unusable", "both"])
def test_export_writes_each_live_row_once_and_no_superseded_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, kind: str
) -> None:
    root = grown_cache(tmp_path / "train", changed=kind != "unusable", unusable=kind != "changed")
    out = tmp_path / f"rows{suffix}"
    assert main(["inspect", str(root), "--export", str(out)]) == 0
    reader = CacheReader(root)
    ids = _exported_ids(out)
    assert ids == reader.sample_ids and len(set(ids)) == len(ids) == len(reader)
    assert f"exported {out} ({len(reader)} rows" in capsys.readouterr().out
    if kind != "unusable" and suffix == ".parquet":  # the new version's targets, not the old one's
        assert _exported_targets(out, "s01") == reader.get("s01").target_ids.tolist()
        assert _exported_targets(out, "s01") != _sample("s01", 1).target_ids.tolist()


def test_the_documented_pyarrow_recipe_reads_only_the_live_rows(tmp_path: Path) -> None:
    root = grown_cache(tmp_path / "train")
    text = (ROOT / "docs" / "cache_format.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "pyarrow.dataset" in b)
    namespace: dict[str, Any] = {}
    exec(
        compile(block.replace('"runs/demo/cache/train"', repr(str(root))), "cache_format.md", "exec"),
        namespace,
    )
    ids = namespace["table"].column("sample_id").to_pylist()
    assert sorted(ids) == sorted(CacheReader(root).sample_ids) and len(ids) == N_ROWS - 1


@pytest.mark.parametrize("target", ["shard", "new file", "parts"])
def test_export_into_the_cache_directory_is_refused_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    root = grown_cache(tmp_path / "train")
    shard = sorted(root.glob("shard-*.arrow"))[0]
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    out = {"shard": shard.with_suffix(".arrow"), "new file": root / "rows.parquet"}.get(
        target, root / "parts" / ".." / "x.jsonl"
    )
    assert main(["inspect", str(root), "--export", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err == (
        f"error: ConfigError: --export {out}: is inside the cache directory {root} (it would replace or "
        "add to the cache's own files); export to a path outside it"
    )
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    CacheReader(root)  # still whole


class _FullDisk:
    """The file or Arrow writer ``inner`` whose ``fail_at``-th ``method`` call fails with ENOSPC (by
    default the second: the first reached the file)."""

    def __init__(self, inner: Any, method: str, fail_at: int = 2):
        self.inner, self.method, self.fail_at, self.calls = inner, method, fail_at, 0

    def __getattr__(self, name: str) -> Any:
        if name != self.method:
            return getattr(self.inner, name)

        def call(*args: Any) -> Any:
            self.calls += 1
            if self.calls == self.fail_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return getattr(self.inner, name)(*args)

        return call

    def __enter__(self) -> _FullDisk:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self.inner.__exit__(*exc)


def _fill_disk(monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    """ENOSPC at the second write of the library writer (or file) behind ``suffix``'s format."""
    if suffix == ".parquet":
        parquet = pq.ParquetWriter
        monkeypatch.setattr(pq, "ParquetWriter", lambda *a, **k: _FullDisk(parquet(*a, **k), "write_batch"))
    elif suffix == ".arrow":
        stream = pa.ipc.new_stream
        monkeypatch.setattr(pa.ipc, "new_stream", lambda *a, **k: _FullDisk(stream(*a, **k), "write_batch"))
    else:
        opener = lambda *a, **k: _FullDisk(open(*a, **k), "write")  # noqa: E731, SIM115  # closed by the sink
        monkeypatch.setattr(export_module, "open", opener, raising=False)


@pytest.mark.parametrize("suffix", [".parquet", ".arrow", ".jsonl"])
def test_a_full_disk_during_export_is_one_line_and_keeps_the_old_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    root = grown_cache(tmp_path / "train", changed=False, unusable=False)
    # Several batches (the shards already hold several), so the first reaches the file.
    monkeypatch.setattr(export_module, "ROWS_PER_BATCH", 2, raising=False)
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    out = out_dir / f"rows{suffix}"
    out.write_bytes(b"the previous export")
    with monkeypatch.context() as full:
        _fill_disk(full, suffix)
        code = main(["inspect", str(root), "--export", str(out)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"error: DiskFullError: {out}: no space left on device")
    assert err.endswith(f"{out.name} was left as it was; free space and run the same command again")
    assert out.read_bytes() == b"the previous export"
    assert [p.name for p in out_dir.iterdir()] == [out.name]  # no temporary left
    assert main(["inspect", str(root), "--export", str(out)]) == 0
    assert _exported_ids(out) == CacheReader(root).sample_ids
    assert [p.name for p in out_dir.iterdir()] == [out.name]


def test_the_html_report_escapes_a_sample_id_everywhere(tmp_path: Path) -> None:
    from PIL import Image

    from pipeline.inspection.report import write_report
    from pipeline.inspection.sources import RowSource
    from pipeline.inspection.summary import profile

    evil = '"><script>alert(1)</script><img x="'
    with _writer(tmp_path / "train") as w:
        w.add(_sample(evil, 0))
        w.finalize(rows_in=1)
    reader = CacheReader(tmp_path / "train")
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8), "red").save(image)
    messages = [{"role": "user", "content": "<image>describe"}, {"role": "assistant", "content": "red"}]
    rows = RowSource({evil: Row(evil, messages, [str(image)])}, None, [])
    page_path = tmp_path / "report.html"
    assert write_report(reader, page_path, profile(reader), rows=rows) == 1
    page = page_path.read_text()
    assert "<script" not in page and evil not in page
    assert 'alt="image 1 of &quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img x=&quot;"' in page


def _split_file(path: Path) -> Path:
    """The dataset rows behind :func:`grown_cache`'s samples (text only)."""
    rows = [
        {
            "sample_id": f"s{i:02d}",
            "messages": [
                {"role": "user", "content": "Describe."},
                {"role": "assistant", "content": f"row {i}"},
            ],
        }
        for i in range(N_ROWS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_export_written_writes_each_live_row_once(tmp_path: Path) -> None:
    from pipeline.teacher.written import export_written

    root = grown_cache(tmp_path / "train")
    out = tmp_path / "written.jsonl"
    counts = export_written(root, _split_file(tmp_path / "split.jsonl"), out)
    ids = [json.loads(line)["sample_id"] for line in out.read_text().splitlines()]
    assert ids == CacheReader(root).sample_ids and counts["rows"] == len(set(ids)) == N_ROWS - 1


def test_a_full_disk_in_export_written_is_one_line_and_keeps_the_old_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.data as data_module
    from pipeline.errors import exit_code
    from pipeline.teacher.written import export_written

    root = grown_cache(tmp_path / "train", changed=False, unusable=False)
    split = _split_file(tmp_path / "split.jsonl")
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    out = out_dir / "written.jsonl"
    out.write_text("the previous export\n")
    write_rows = data_module.write_rows

    def half_then_full(rows: list[Any], path: Path) -> None:
        write_rows(rows[:2], path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as full:
        full.setattr(data_module, "write_rows", half_then_full)
        assert exit_code(lambda: export_written(root, split, out)) == 2  # what `distill export-written` runs
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: DiskFullError: {out}: no space left on device"), err
    assert out.read_text() == "the previous export\n" and [p.name for p in out_dir.iterdir()] == [out.name]
    assert exit_code(lambda: export_written(root, split, out)) == 0
    assert len(out.read_text().splitlines()) == N_ROWS


def test_a_full_disk_while_writing_the_html_report_keeps_the_old_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.files as files_module

    root = grown_cache(tmp_path / "train", changed=False, unusable=False)
    page = tmp_path / "pages" / "report.html"
    page.parent.mkdir()
    page.write_text("the previous page")
    opener = lambda *a, **k: _FullDisk(open(*a, **k), "write", fail_at=1)  # noqa: E731, SIM115  # closed by atomic_write
    with monkeypatch.context() as full:
        full.setattr(files_module, "open", opener, raising=False)
        assert main(["inspect", str(root), "--html", str(page)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: DiskFullError: {page}: no space left on device"), err
    assert page.read_text() == "the previous page" and [p.name for p in page.parent.iterdir()] == [page.name]
    assert main(["inspect", str(root), "--html", str(page)]) == 0
    assert page.read_text().startswith("<!DOCTYPE html>")


def test_a_full_disk_while_writing_the_figures_keeps_the_old_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.files as files_module

    root = grown_cache(tmp_path / "train", changed=False, unusable=False)
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "histograms.png").write_bytes(b"the previous figure")
    opener = lambda *a, **k: _FullDisk(open(*a, **k), "write", fail_at=1)  # noqa: E731, SIM115  # closed by atomic_write
    with monkeypatch.context() as full:
        full.setattr(files_module, "open", opener, raising=False)
        assert main(["inspect", str(root), "--figures", str(figures)]) == 2
    err = capsys.readouterr().err.strip()
    png = figures / "histograms.png"
    assert "\n" not in err and err.startswith(f"error: DiskFullError: {png}: no space left on device"), err
    assert png.read_bytes() == b"the previous figure" and [p.name for p in figures.iterdir()] == [png.name]
    assert main(["inspect", str(root), "--figures", str(figures)]) == 0
    assert sorted(p.name for p in figures.iterdir()) == ["histograms.png", "histograms.svg"]
