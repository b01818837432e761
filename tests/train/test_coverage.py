"""Training never uses a partial, over-skipped or empty split silently; it records what it left out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pipeline.errors import CacheMismatchError, DataError
from pipeline.train.coverage import (
    NOT_CACHED,
    REPORT_NAME,
    bind_to_cache,
    check_left_out,
    load_split,
    write_report,
)

N_ROWS = 40  # 2 of them unusable (missing image, not JSON): 5% of the split
BAD_LINE = "line-000010"  # the id a line that is not JSON gets (its line number, not the file name)


class FakeCache:
    """What ``bind_to_cache`` reads from a ``CacheReader``: sample ids, skip records, root."""

    def __init__(self, root: Path, cached: list[str], skipped: dict[str, str]):
        self.root, self.sample_ids = root, cached
        self._skipped = {sid: {"reason": r, "detail": f"{sid}: {r}"} for sid, r in skipped.items()}

    def skipped(self) -> dict[str, dict[str, str]]:
        return self._skipped


def _dataset(tmp: Path, n: int = N_ROWS) -> Path:
    Image.new("RGB", (28, 28), (0, 90, 200)).save(tmp / "ok.png")
    lines = []
    for i in range(n):
        image = "gone.png" if i == 5 else "ok.png"
        row = {
            "sample_id": f"r{i:02d}",
            "images": [image],
            "messages": [
                {"role": "user", "content": "<image>Describe."},
                {"role": "assistant", "content": "a small blue square."},
            ],
        }
        lines.append("{not json" if i == 9 else json.dumps(row))
    path = tmp / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_split_checks_images_before_training(tmp_path: Path) -> None:
    split = load_split("train", [str(_dataset(tmp_path))])
    assert split.rows_in == N_ROWS and len(split.rows) == N_ROWS - 2
    assert {r.reason for r in split.excluded} == {"missing_image", "bad_row"}
    with pytest.raises(DataError, match=r"train.jsonl:6: sample 'r05': missing_image: field 'images\[0\]'"):
        load_split("train", [str(_dataset(tmp_path))], strict=True)


def test_empty_split_is_refused_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "val.jsonl").write_text("")
    with pytest.raises(
        DataError, match=r"val.jsonl: no usable rows for the val split: the file holds no rows"
    ):
        load_split("val", [str(tmp_path / "val.jsonl")])


def test_partial_cache_is_refused_unless_opted_in(tmp_path: Path) -> None:
    split = load_split("train", [str(_dataset(tmp_path))])
    cached = [f"r{i:02d}" for i in range(12) if i not in (5, 9)]  # as `distill cache --limit 12` leaves it
    limited = FakeCache(tmp_path / "cache", cached, {"r05": "missing_image", BAD_LINE: "bad_row"})
    with pytest.raises(
        CacheMismatchError, match=r"covers 12 of the 40 rows .*: 28 rows are neither cached nor recorded"
    ):
        bind_to_cache(split, limited)
    bound = bind_to_cache(split, limited, allow_partial=True)
    assert [r.sample_id for r in bound.rows] == cached
    reasons = [r.reason for r in bound.excluded]
    assert (
        reasons.count(NOT_CACHED) == 28
        and reasons.count("missing_image") == 1
        and reasons.count("bad_row") == 1
    )
    check_left_out(bound, 0.05)  # partial-cache rows were opted into; 2 of 40 unusable is 5%


def test_full_cache_binds_with_the_recorded_skip_reasons(tmp_path: Path) -> None:
    split = load_split("train", [str(_dataset(tmp_path))])
    ids = [f"r{i:02d}" for i in range(N_ROWS)]
    cache = FakeCache(
        tmp_path / "cache",
        [s for s in ids if s not in ("r05", "r09", "r20")],
        {"r05": "missing_image", BAD_LINE: "bad_row", "r20": "truncated_by_max_length"},
    )
    bound = bind_to_cache(split, cache)
    assert len(bound.rows) == N_ROWS - 3 and bound.rows_in == N_ROWS
    assert sorted(r.reason for r in bound.excluded) == ["bad_row", "missing_image", "truncated_by_max_length"]
    with pytest.raises(
        DataError,
        match=r"3 of 40 rows \(7.5%\) of the train split are unusable .* custom.max_skipped_fraction = 0.05",
    ):
        check_left_out(bound, 0.05)
    check_left_out(bound, 0.1)
    with pytest.raises(DataError, match=r"sample 'r05': missing_image: .* \(custom.strict\)"):
        check_left_out(bound, 0.1, strict=True)


def test_cache_rows_the_split_lacks_are_counted_not_refused(tmp_path: Path) -> None:
    split = load_split("train", [str(_dataset(tmp_path))])
    cached = ["zz", *(f"r{i:02d}" for i in range(N_ROWS) if i not in (5, 9))]
    bound = bind_to_cache(split, FakeCache(tmp_path, cached, {"r05": "missing_image"}), allow_partial=True)
    assert [r.sample_id for r in bound.rows] == cached[1:] and bound.unused_cache_rows == 1
    assert write_report([bound], tmp_path / "run").is_file()
    report = json.loads((tmp_path / "run" / REPORT_NAME).read_text())["train"]
    assert report["unused_cache_rows"] == 1 and report["rows_used"] == N_ROWS - 2


def test_a_sample_id_in_two_files_is_refused(tmp_path: Path) -> None:
    a = _dataset(tmp_path)
    b = tmp_path / "more.jsonl"
    b.write_text(a.read_text().splitlines()[0].replace("small blue", "large blue") + "\n")
    with pytest.raises(
        DataError, match=r"more.jsonl:1: field 'sample_id': duplicate id 'r00' \(first at .*train.jsonl:1\)"
    ):
        load_split("train", [str(a), str(b)])


def test_a_cache_with_ids_generated_from_a_file_name_says_how_to_move(tmp_path: Path) -> None:
    """Caches built before generated ids stopped depending on the file name hold ``<stem>-<hash>``."""
    from pipeline.data import content_id

    path = tmp_path / "renamed.jsonl"
    row = {"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]}
    path.write_text(json.dumps(row) + "\n")
    split = load_split("train", [str(path)])
    old_id = "train-" + content_id(row).removeprefix("row-")
    with pytest.raises(
        CacheMismatchError, match=r"ids look generated from a file name.*run `distill cache` again"
    ):
        bind_to_cache(split, FakeCache(tmp_path, [old_id], {}))


def test_report_records_rows_used_and_every_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    split = load_split("train", [str(_dataset(tmp_path))])
    path = write_report([split], tmp_path / "run")
    assert path == tmp_path / "run" / REPORT_NAME
    report = json.loads(path.read_text())["train"]
    assert report["rows_in"] == N_ROWS and report["rows_used"] == N_ROWS - 2
    assert report["excluded_by_reason"] == {"bad_row": 1, "missing_image": 1}
    assert {r["sample_id"] for r in report["excluded_rows"]} == {"r05", BAD_LINE}
    assert (
        f"{N_ROWS} rows, using {N_ROWS - 2}, left out 2 (bad_row: 1, missing_image: 1)"
        in capsys.readouterr().err  # a log line
    )


class SkipLogCache(FakeCache):
    """A ``FakeCache`` whose manifest carries the skip records' row digests, as a real cache's does."""

    def __init__(self, root: Path, cached: list[str], records: dict[str, tuple[str, str]]):
        super().__init__(root, cached, {sid: reason for sid, (reason, _) in records.items()})
        self.manifest = {
            "skipped": [
                {"sample_id": sid, "reason": r, "detail": f"{sid}: {r}", "row_digest": d}
                for sid, (r, d) in records.items()
            ]
        }


def test_a_skip_record_for_another_version_of_the_row_is_refused_as_stale(tmp_path: Path) -> None:
    """A skip record whose digest is not the row's (the row fixed, or the record edited) is one line
    naming the row and the remedy, never a silent leave-out or a KeyError; the same digest keeps it."""
    from pipeline.encoding import row_digest

    split = load_split("train", [str(_dataset(tmp_path))])
    row = next(r for r in split.rows if r.sample_id == "r03")
    cached = [r.sample_id for r in split.rows if r.sample_id != "r03"]
    bad = {"r05": ("missing_image", ""), BAD_LINE: ("bad_row", "")}
    same = SkipLogCache(tmp_path, cached, {**bad, "r03": ("truncated_by_max_length", row_digest(row))})
    bound = bind_to_cache(split, same)
    assert {r.sample_id: r.reason for r in bound.excluded}["r03"] == "truncated_by_max_length"
    forged = SkipLogCache(tmp_path, cached, {**bad, "r03": ("truncated_by_max_length", "0" * 64)})
    with pytest.raises(CacheMismatchError) as err:
        bind_to_cache(split, forged)
    msg = str(err.value)
    assert "train.jsonl:4: sample 'r03': the skip record of the cache at" in msg
    assert "another version of the row" in msg and "run `distill cache` to re-attempt the row" in msg
    assert "\n" not in msg
    partial = bind_to_cache(split, forged, allow_partial=True)
    assert {r.sample_id: r.reason for r in partial.excluded}["r03"] == NOT_CACHED


def test_a_row_check_skip_of_a_row_that_passes_now_is_stale(tmp_path: Path) -> None:
    """The cache recorded r03 as missing its image (no digest: the row check skipped it); the row is
    usable now, so the record no longer holds. A row still unusable keeps its record."""
    split = load_split("train", [str(_dataset(tmp_path))])
    cached = [r.sample_id for r in split.rows if r.sample_id != "r03"]
    cache = SkipLogCache(
        tmp_path,
        cached,
        {"r05": ("missing_image", ""), BAD_LINE: ("bad_row", ""), "r03": ("missing_image", "")},
    )
    with pytest.raises(
        CacheMismatchError, match=r"sample 'r03'.*the row passes that check now; run `distill cache`"
    ):
        bind_to_cache(split, cache)
    del cache.manifest["skipped"][2]
    cache._skipped["r03"] = {"reason": "encode_failed", "detail": "r03: encode_failed"}
    cache.manifest["skipped"].append(
        {"sample_id": "r03", "reason": "encode_failed", "detail": "", "row_digest": ""}
    )
    bound = bind_to_cache(split, cache)  # an encoding failure with no digest: nothing to compare
    assert {r.sample_id: r.reason for r in bound.excluded} == {
        "r03": "encode_failed",
        "r05": "missing_image",
        BAD_LINE: "bad_row",
    }
