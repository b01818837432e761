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


def _plain(answer: str = "a caption.", role: str = "assistant") -> dict:
    return {"messages": [{"role": "user", "content": "Describe."}, {"role": role, "content": answer}]}


def test_a_byte_order_mark_keeps_the_first_row(tmp_path: Path) -> None:
    src = tmp_path / "train.jsonl"
    src.write_bytes(
        b"\xef\xbb\xbf" + (json.dumps(_plain("one")) + "\n" + json.dumps(_plain("two")) + "\n").encode()
    )
    rows = read_rows(src)
    assert [type(r) for r in rows] == [Row, Row]
    report = prepare_splits([src], tmp_path / "out")["train"]
    assert (report["rows_in"], report["kept"], report["dropped"]) == (2, 2, 0)


def test_generated_ids_depend_on_content_not_on_the_file_name(tmp_path: Path) -> None:
    data = (json.dumps(_plain("one")) + "\n" + json.dumps(_plain("two")) + "\n").encode()
    a = tmp_path / "train.jsonl"
    b = tmp_path / "elsewhere" / "copy-of-train.jsonl"
    b.parent.mkdir()
    a.write_bytes(data)
    b.write_bytes(data)
    ids_a = [r.sample_id for r in read_rows(a)]
    assert ids_a == [r.sample_id for r in read_rows(b)]
    assert all(i.startswith("row-") and len(i) == 16 for i in ids_a)
    # Identical rows in one file: distinct ids by occurrence, the first keeps the plain id.
    c = tmp_path / "dup.jsonl"
    c.write_text(json.dumps(_plain("one")) + "\n" + json.dumps(_plain("one")) + "\n")
    assert [r.sample_id for r in read_rows(c)] == [ids_a[0], ids_a[0] + "-1"]


def test_a_misspelled_role_has_one_reason_in_prepare_and_cache(tmp_path: Path) -> None:
    from pipeline.teacher.written import partition_for_written

    src = tmp_path / "train.jsonl"
    lines = [_plain("ok"), _plain("typo", role="assistnat"), {"messages": [{"role": "user", "content": "x"}]}]
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    report = prepare_splits([src], tmp_path / "out")["train"]
    in_prepare = {d["source"]: d["reason"] for d in report["dropped_rows"]}
    _, bad = partition_for_written(read_rows(src), "off")
    in_cache = {r.source: r.reason for r in bad}
    assert in_prepare == in_cache == {f"{src}:2": "bad_row", f"{src}:3": "prompt_only_in_labelled_split"}
    assert "'messages[1].role': 'assistnat'" in next(d["detail"] for d in report["dropped_rows"])


def test_every_reason_code_is_in_the_table_and_the_docs() -> None:
    import re

    from pipeline import data
    from pipeline.cache.format import SKIP_WRITTEN_UNFINISHED
    from pipeline.teacher.written import EMPTY_WRITTEN, PROMPT_ONLY
    from pipeline.train.coverage import NOT_CACHED

    in_code = {
        data.MISSING_IMAGE, data.UNREADABLE_IMAGE, data.EMPTY_RESPONSE, data.NON_UTF8, data.BAD_ROW,
        data.TRUNCATED, data.ENCODE_FAILED, data.REMOTE_IMAGE, PROMPT_ONLY, SKIP_WRITTEN_UNFINISHED,
        EMPTY_WRITTEN, NOT_CACHED,
    }  # fmt: skip
    assert in_code == set(data.SKIP_REASONS)
    doc = (Path(__file__).parents[1] / "docs" / "troubleshooting.md").read_text()
    table = doc.split("## Skip reasons", 1)[1].split("\n\n## ", 1)[0]
    assert set(re.findall(r"^\| `([a-z_0-9]+)` \|", table, re.M)) == set(data.SKIP_REASONS)


def test_a_data_error_without_a_code_counts_as_an_encode_failure() -> None:
    from pipeline.data import ENCODE_FAILED
    from pipeline.errors import DataError

    assert DataError("x").reason == ENCODE_FAILED
    err = DataError("x", "missing_image", "images[0]")
    assert (err.reason, err.detail, str(err)) == ("missing_image", "images[0]", "x")


def _jsonl(path: Path, *answers: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(_plain(a)) + "\n" for a in answers))
    return path


def test_inputs_that_share_a_name_keep_every_row(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a" / "data.jsonl", "one", "two")
    b = _jsonl(tmp_path / "b" / "data.jsonl", "three")
    flat = _jsonl(tmp_path / "val.jsonl", "four")
    out = tmp_path / "out"
    report = prepare_splits([a, b, flat], out)
    assert set(report) == {"a/data", "b/data", "val"}
    for src, dst in [(a, out / "a" / "data.jsonl"), (b, out / "b" / "data.jsonl"), (flat, out / "val.jsonl")]:
        # the same rows under the same ids as each file prepared on its own
        assert [(r.sample_id, r.messages) for r in read_rows(dst)] == [
            (r.sample_id, r.messages) for r in read_rows(src)
        ]
    assert not (out / "data.jsonl").exists()
    assert json.loads((out / "prepare_report.json").read_text())["a/data"]["kept"] == 2


def test_the_same_input_twice_is_refused(tmp_path: Path) -> None:
    a = _jsonl(tmp_path / "a" / "data.jsonl", "one")
    with pytest.raises(DataError, match=r"data.jsonl is given twice"):
        prepare_splits([a, tmp_path / "a" / ".." / "a" / "data.jsonl"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", [".", "./", "sub/.."])
def test_out_that_would_overwrite_an_input_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], out: str
) -> None:
    from pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    src = _jsonl(tmp_path / "train.jsonl", "one")
    before = src.read_bytes()
    assert main(["prepare", "train.jsonl", "--out", out]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: DataError: --out {Path(out)}: would overwrite the input train.jsonl"), err
    assert src.read_bytes() == before and not (tmp_path / "prepare_report.json").exists()
