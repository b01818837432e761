"""Dataset rows: unusable lines are reported with file, line and reason, never dropped silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipeline.data import BadRow, Row, check_row, read_rows
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
