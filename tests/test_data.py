"""Dataset rows: unusable lines are reported with file, line and reason, never dropped silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipeline.data import BadRow, Row, check_row, count_reasons, partition_rows, read_rows, require_rows
from pipeline.errors import DataError
from pipeline.prepare import prepare_splits


def _row(sid: str, images: list[str], answer: str = "a large red circle at the top left.") -> dict:
    return {
        "sample_id": sid,
        "images": images,
        "messages": [
            {"role": "user", "content": "<image>" * len(images) + "Describe."},
            {"role": "assistant", "content": answer},
        ],
    }


def _dataset(tmp: Path) -> Path:
    Image.new("RGB", (56, 56), (200, 10, 10)).save(tmp / "ok.png")
    (tmp / "bad.png").write_bytes(b"not an image")
    lines = [
        json.dumps(_row("ok", ["ok.png"])).encode(),
        json.dumps(_row("missing", ["nope.png"])).encode(),
        json.dumps(_row("corrupt", ["bad.png"])).encode(),
        json.dumps(_row("empty", ["ok.png"], answer="  ")).encode(),
        json.dumps({**_row("tags", ["ok.png"]), "images": []}).encode(),  # 1 tag, 0 images
        b'{"sample_id": "latin", "messages": "caf\xe9"}',
        b"not json",
    ]
    path = tmp / "train.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_each_problem_has_its_reason(tmp_path: Path) -> None:
    rows = read_rows(_dataset(tmp_path))
    reasons = {}
    for r in rows:
        if isinstance(r, BadRow):
            reasons[r.source.rsplit(":", 1)[1]] = r.reason
        else:
            assert isinstance(r, Row)
            problem = check_row(r)
            reasons[r.sample_id] = problem[0] if problem else "ok"
    assert reasons == {
        "ok": "ok",
        "missing": "missing_image",
        "corrupt": "unreadable_image",
        "empty": "empty_response",
        "tags": "bad_row",
        "6": "non_utf8",
        "7": "bad_row",
    }


def test_prepare_reconciles_counts(tmp_path: Path) -> None:
    src = _dataset(tmp_path)
    report = prepare_splits([src], tmp_path / "out")["train"]
    assert report["rows_in"] == 7 == report["kept"] + report["dropped"]
    assert report["kept"] == 1
    kept = read_rows(tmp_path / "out" / "train.jsonl")
    assert [r.sample_id for r in kept] == ["ok"]
    assert Path(kept[0].images[0]).is_file()  # image paths stay valid relative to the new file


def test_duplicate_sample_ids_name_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(_row("x", [])) + "\n" + json.dumps(_row("x", [])) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:2.*'x'.*d.jsonl:1"):
        read_rows(path)


def test_remote_image_is_refused_with_its_url(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(_row("web", ["http://example.com/cat.png"])) + "\n")
    (row,) = read_rows(path)
    assert isinstance(row, Row) and row.images == ["http://example.com/cat.png"]  # not joined to a path
    reason, detail = check_row(row) or ("", "")
    assert reason == "remote_image"
    assert "http://example.com/cat.png: remote images are not fetched" in detail


def test_images_that_are_not_paths_are_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({**_row("odd", []), "images": [{"url": "x"}]}) + "\n")
    (row,) = read_rows(path)
    assert isinstance(row, BadRow) and row.reason == "bad_row" and "field 'images'" in row.detail


@pytest.mark.parametrize("content", [b"", b"\n\n", b"not json\n"])
def test_prepare_refuses_a_file_without_usable_rows(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "train.jsonl"
    src.write_bytes(content)
    with pytest.raises(DataError, match=r"train.jsonl: no usable rows"):
        prepare_splits([src], tmp_path / "out")
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_partition_rows_gives_every_reason_and_strict_stops_at_the_first(tmp_path: Path) -> None:
    rows = read_rows(_dataset(tmp_path))
    usable, bad = partition_rows(rows)
    assert [r.sample_id for r in usable] == ["ok"]
    assert count_reasons(bad) == {
        "bad_row": 2,
        "empty_response": 1,
        "missing_image": 1,
        "non_utf8": 1,
        "unreadable_image": 1,
    }
    with pytest.raises(DataError, match=r"train.jsonl:2: sample 'missing': missing_image"):
        partition_rows(rows, strict=True)
    with pytest.raises(
        DataError, match=r"x.jsonl: no usable rows for the val split: all 6 rows are unusable \(bad_row: 2"
    ):
        require_rows("x.jsonl", 0, bad, "usable rows for the val split")


def test_a_data_error_without_a_code_counts_as_an_encode_failure() -> None:
    from pipeline.data import ENCODE_FAILED
    from pipeline.errors import DataError

    assert DataError("x").reason == ENCODE_FAILED
    err = DataError("x", "missing_image", "images[0]")
    assert (err.reason, err.detail, str(err)) == ("missing_image", "images[0]", "x")
