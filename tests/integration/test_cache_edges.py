"""A bad day with a real cache (tiny demo models): a limit on a finished cache, an audit of a cache
training would refuse, and a dataset edited after caching, each named in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.cli import main
from tests.conftest import gkd_config, write_config

N_BAD = 4  # rows with a missing image, appended to the demo's train split


@pytest.fixture(scope="module")
def built(demo_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A train split of the demo rows plus ``N_BAD`` rows with a missing image, cached in full."""
    from pipeline.config import load_config
    from pipeline.teacher.stage import run_caching

    root = tmp_path_factory.mktemp("edges")
    lines = demo_assets["train"].read_text().splitlines()
    images = demo_assets["train"].parent
    rows = []
    for line in lines:
        row = json.loads(line)
        row["images"] = [str((images / p).resolve()) for p in row.get("images", [])]
        rows.append(row)
    pictured = [r for r in rows if len(r["images"]) == 1]
    for i in range(N_BAD):
        rows.append({**pictured[i], "sample_id": f"gone-{i}", "images": [str(root / f"gone-{i}.png")]})
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = gkd_config(demo_assets, demo_assets["teacher"], root / "cache", root / "run")
    cfg["data"] = {"dataset": [str(data)], "max_length": 512}
    path = write_config(root / "cfg.yaml", cfg)
    counts = run_caching(load_config(path), split="train", progress=False)["train"]
    return {"root": root, "config": path, "data": data, "rows": len(rows), "counts": counts}


def _copy(built: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the built config, dataset (images by absolute path) and cache, to change freely."""
    shutil.copytree(built["root"] / "cache", tmp_path / "cache")
    shutil.copy(built["data"], tmp_path / "train.jsonl")
    cfg = json.loads(json.dumps(__import__("yaml").safe_load(built["config"].read_text())))
    cfg["custom"]["teacher_cache"] = str(tmp_path / "cache")
    cfg["data"]["dataset"] = [str(tmp_path / "train.jsonl")]
    cfg["train"]["output_dir"] = str(tmp_path / "run")
    write_config(tmp_path / "cfg.yaml", cfg)
    return tmp_path


def test_limit_on_a_finished_cache_leaves_it_as_it_is(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _copy(built, tmp_path)
    manifest = (d / "cache" / "train" / "manifest.json").read_bytes()
    assert built["counts"]["cached"] + built["counts"]["skipped"] == built["rows"]
    code = main(["cache", "--config", str(d / "cfg.yaml"), "--split", "train", "--limit", "10"])
    out = capsys.readouterr().err  # the stage's notes are log lines, on stderr
    assert code == 0
    held, c = built["rows"], built["counts"]
    assert (
        f"[cache train] {d / 'cache' / 'train'} already holds {held} rows ({c['cached']} cached, "
        f"{c['skipped']} skipped), more than --limit 10 asks for: left as it is"
    ) in out
    assert (d / "cache" / "train" / "manifest.json").read_bytes() == manifest


def test_audit_reports_a_lost_skip_record(
    built: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _copy(built, tmp_path)
    path = d / "cache" / "train" / "manifest.json"
    manifest = json.loads(path.read_text())
    lost = manifest["skipped"].pop(0)
    path.write_text(json.dumps(manifest))
    assert main(["inspect", str(d / "cache" / "train"), "--audit"]) == 1
    out = capsys.readouterr().out
    assert f"counts.skipped is {N_BAD} but {N_BAD - 1} skip records are listed" in out
    # With the dataset, the audit names the row training would refuse.
    assert main(["inspect", str(d / "cache" / "train"), "--audit", "--dataset", str(d / "train.jsonl")]) == 1
    out = capsys.readouterr().out
    assert "coverage" in out and f"e.g. {lost['sample_id']!r}" in out


def test_audit_with_the_config_reports_a_limited_cache(
    built: dict[str, Any], demo_assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _copy(built, tmp_path)
    shutil.rmtree(d / "cache")
    assert main(["cache", "--config", str(d / "cfg.yaml"), "--split", "train", "--limit", "10"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(d / "cache" / "train"), "--audit", "--config", str(d / "cfg.yaml")]) == 1
    out = capsys.readouterr().out
    assert f"the cache covers 10 of the {built['rows']} rows of {d / 'train.jsonl'}" in out


@pytest.mark.parametrize("edit", ["caption", "image_in_place", "image_deleted"])
def test_a_dataset_edited_after_caching_names_the_row_and_field(
    built: dict[str, Any], tmp_path: Path, edit: str
) -> None:
    from PIL import Image

    from pipeline.cache.policy import CachePolicy
    from pipeline.config import load_config
    from pipeline.encoding import RowEncoder
    from pipeline.errors import CacheMismatchError, DataError
    from pipeline.splits import open_split_cache
    from pipeline.train.coverage import bind_to_cache, load_split
    from pipeline.train.data import EncodedDataset

    d = _copy(built, tmp_path)
    rows = [json.loads(line) for line in (d / "train.jsonl").read_text().splitlines()]
    line = next(i for i, r in enumerate(rows) if len(r["images"]) == 1)
    target = rows[line]
    image = tmp_path / "img.png"
    shutil.copy(target["images"][0], image)
    target["images"] = [str(image)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(d / "cfg.yaml")
    encoder = RowEncoder.from_config(cfg)
    # Re-cache with the image at its new place, so only the edit below differs.
    from pipeline.teacher.stage import run_caching

    shutil.rmtree(d / "cache")
    run_caching(cfg, split="train", progress=False)
    # What training does before its first step: open the cache, bind the rows, check each encoding.
    # The cache is keyed row by row, so the edit is found at its row, named with its field.
    if edit == "caption":
        target["messages"][-1]["content"] += " Also a dot."
        (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        error, field = CacheMismatchError, "first difference: input_ids"
    elif edit == "image_in_place":
        with Image.open(image) as im:
            im.convert("RGB").point(lambda v: 255 - v).save(image)
        error, field = CacheMismatchError, "image_grid_thw or image bytes"
    else:
        image.unlink()
        error, field = DataError, "is cached but unusable now: missing_image"
    cache = open_split_cache(cfg, "train", CachePolicy.FINGERPRINT, encoder=encoder)
    with pytest.raises(error) as info:
        split = bind_to_cache(load_split("train", cfg.data.dataset), cache)
        ds = EncodedDataset(split.rows, encoder, cache)
        for i in range(len(ds)):
            ds[i]
    message = str(info.value)
    assert f"{d / 'train.jsonl'}:{line + 1}: sample {target['sample_id']!r}" in message, message
    assert field in message and "run `distill cache`" in message, message
    # The remedy the message names: the cache stage re-caches that row alone (or records its skip),
    # and training then binds every row.
    run_caching(cfg, split="train", progress=False)
    cache = open_split_cache(cfg, "train", CachePolicy.FINGERPRINT, encoder=encoder)
    split = bind_to_cache(load_split("train", cfg.data.dataset), cache)
    ds = EncodedDataset(split.rows, encoder, cache)
    assert len([ds[i] for i in range(len(ds))]) == built["rows"] - N_BAD - (edit == "image_deleted")
    last = json.loads((d / "cache" / "train" / "manifest.json").read_text())["generations"][-1]
    assert (last["changed"], last["superseded"]) == ((0, 1) if edit == "image_deleted" else (1, 1)), last


def test_distill_cache_on_a_full_disk_is_one_line_and_the_rerun_completes_it(
    built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``distill cache`` itself, with ENOSPC injected at the third shard batch write (small shards)."""
    import errno
    import os

    import pyarrow as pa

    from pipeline.cache.reader import CacheReader

    d = _copy(built, tmp_path)
    shutil.rmtree(d / "cache")
    argv = [
        "cache",
        "--config",
        str(d / "cfg.yaml"),
        "--split",
        "train",
        "--set",
        "custom.cache_shard_mb=0.002",
    ]
    writes = {"n": 0}
    new_file = pa.ipc.new_file

    class Full:
        def __init__(self, inner: Any):
            self.inner = inner

        def write_batch(self, batch: Any) -> None:
            writes["n"] += 1
            if writes["n"] == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.inner.write_batch(batch)

        def close(self) -> None:
            self.inner.close()

    with monkeypatch.context() as m:
        m.setattr(pa.ipc, "new_file", lambda *a, **k: Full(new_file(*a, **k)))
        assert main(argv) == 2
    (err,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert err.startswith("error:"), err  # on its own line, not glued onto tqdm's bar
    root = d / "cache" / "train"
    assert err.startswith(f"error: DiskFullError: {root}: no space left on device ([Errno 28]")
    assert "complete shards" in err and err.endswith("run the same command again: it resumes from there")
    assert main(argv) == 0
    clean = json.loads((built["root"] / "cache" / "train" / "manifest.json").read_text())
    resumed = json.loads((root / "manifest.json").read_text())
    # The same rows as a clean run, each with the same counts and skip reasons; logprobs as close as
    # batch composition allows (a resumed run batches the remaining rows differently).
    assert resumed["counts"] == clean["counts"]
    reasons = [[(r["sample_id"], r["reason"]) for r in m["skipped"]] for m in (resumed, clean)]
    assert reasons[0] == reasons[1]
    a, b = CacheReader(root), CacheReader(built["root"] / "cache" / "train")
    assert sorted(a.sample_ids) == sorted(b.sample_ids)
    for sid in b.sample_ids:
        x, y = a.get(sid), b.get(sid)
        assert x.encoding_hash == y.encoding_hash and np.array_equal(x.topk_ids, y.topk_ids)
        np.testing.assert_allclose(x.topk_logprobs, y.topk_logprobs, atol=1e-6)
    assert [p.name for p in root.rglob("*.tmp*")] == []
