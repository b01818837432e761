"""``distill inspect --export`` writes what its suffix says or refuses; shards and Hugging Face datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache.reader import CacheReader
from pipeline.cache.writer import CacheWriter
from pipeline.cli import main
from tests.cache.helpers import FINGERPRINT, random_sample


def _cache(root: Path) -> Path:
    rng = np.random.default_rng(3)
    with CacheWriter(
        root, fingerprint=FINGERPRINT, top_k=8, vocab_size=5000, shard_bytes=500, batch_bytes=200
    ) as w:
        for i, n in enumerate([4, 0, 7, 3]):
            w.add(random_sample(rng, f"s{i}", n, 8, 5000))
        w.finalize(rows_in=4)
    return root


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")
    return err


def test_export_refuses_a_suffix_it_would_not_write(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = _cache(tmp_path / "c")
    err = _one_line_error(capsys, ["inspect", str(cache), "--export", str(tmp_path / "e.csv")])
    assert err.startswith(f"error: ConfigError: --export {tmp_path / 'e.csv'}: unknown suffix '.csv'")
    assert "CSV cannot hold per-target lists" in err and ".parquet" in err
    assert not (tmp_path / "e.csv").exists()


def test_export_into_a_missing_directory_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = _cache(tmp_path / "c")
    out = tmp_path / "nowhere" / "e.parquet"
    err = _one_line_error(capsys, ["inspect", str(cache), "--export", str(out)])
    assert (
        err == f"error: ConfigError: --export {out}: directory {out.parent} does not exist; create it first"
    )


def test_export_jsonl_holds_every_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = _cache(tmp_path / "c")
    assert main(["inspect", str(cache), "--export", str(tmp_path / "e.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    reader = CacheReader(cache)
    assert sorted(r["sample_id"] for r in rows) == sorted(reader.sample_ids)
    for r in rows:
        got = reader.get(r["sample_id"])
        assert r["target_ids"] == got.target_ids.tolist()
        want = [[None if np.isneginf(v) else float(v) for v in pos] for pos in got.topk_logprobs.tolist()]
        assert r["topk_logprobs"] == want


def test_shards_and_hugging_face_datasets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What docs/cache_format.md's first screen says: ``load_dataset("arrow")`` opens the shards,
    ``Dataset.from_file`` does not (stream format only) and opens the ``--export`` copy; ``distill
    inspect`` on a shard says so."""
    import datasets
    import pyarrow as pa

    cache = _cache(tmp_path / "c")
    shards = sorted(str(p) for p in cache.glob("shard-*.arrow"))
    assert len(shards) > 1
    ds = datasets.load_dataset("arrow", data_files=shards, split="train", cache_dir=str(tmp_path / "hf"))
    assert sorted(ds["sample_id"]) == ["s0", "s1", "s2", "s3"]
    with pytest.raises(pa.ArrowInvalid, match="metadata bytes"):
        datasets.Dataset.from_file(shards[0])
    capsys.readouterr()  # datasets' progress bars
    err = _one_line_error(capsys, ["inspect", shards[0]])
    assert err.startswith(f"error: CacheFormatError: {shards[0]}: no manifest.json")
    assert f"pass its directory {cache}" in err and "--export rows.arrow" in err
    assert main(["inspect", str(cache), "--export", str(tmp_path / "rows.arrow")]) == 0
    plain = datasets.Dataset.from_file(str(tmp_path / "rows.arrow"))
    assert sorted(plain["sample_id"]) == ["s0", "s1", "s2", "s3"]
