"""Incremental caching on the tiny models: a cache follows its dataset row by row.

Caches here use fp32 log-probs and one row per teacher forward, so a row's cached values do not depend
on which rows shared its batch and "equal" means bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.cache.helpers import assert_same_sample
from tests.conftest import gkd_config, write_config

EXACT = {"logprob_encoding": "fp32", "cache_batch_size": 1, "cache_shard_mb": 0.004}


@pytest.fixture
def one_thread() -> Iterator[None]:
    """In-process caches at one thread, like the subprocesses the tests compare them with: bitwise
    equality needs one float reduction order."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def data(demo_assets: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the demo train split (images included): tests edit it."""
    shutil.copytree(Path(demo_assets["train"]).parent, tmp_path / "data")
    return tmp_path / "data"


def _lines(data: Path) -> list[str]:
    return (data / "train.jsonl").read_text().splitlines()


def _write(data: Path, name: str, lines: list[str]) -> str:
    (data / name).write_text("\n".join(lines) + "\n")
    return str(data / name)


def _config(
    tmp: Path, assets: dict[str, Path], teacher: Path, files: list[str], cache: str = "cache", **train: Any
) -> Any:
    from pipeline.config import load_config

    cfg = gkd_config(assets, teacher, tmp / cache, tmp / "run", custom=dict(EXACT), **train)
    cfg["data"]["dataset"], cfg["data"]["val_dataset"] = files, []
    name = "-".join(Path(f).stem for f in files)
    return load_config(write_config(tmp / f"{cache}-{name}.yaml", cfg))


def _cache(cfg: Any, capsys: pytest.CaptureFixture[str] | None = None, **kw: Any) -> str:
    from pipeline.teacher.stage import run_caching

    run_caching(cfg, progress=False, **kw)
    return capsys.readouterr().err if capsys is not None else ""  # the stage logs on stderr


def _assert_equal_caches(a: Path, b: Path) -> None:
    from pipeline.cache.reader import CacheReader

    ra, rb = CacheReader(a), CacheReader(b)
    assert sorted(ra.sample_ids) == sorted(rb.sample_ids) and len(set(ra.sample_ids)) == len(ra)
    assert ra.skipped() == rb.skipped()
    for sid in rb.sample_ids:
        assert_same_sample(ra.get(sid), rb.get(sid))


def test_added_rows_alone_are_forwarded_and_the_cache_equals_a_fresh_one(
    demo_assets: dict[str, Path],
    tiny_teacher: Path,
    tmp_path: Path,
    data: Path,
    forwards: list[int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = _lines(data)[:10]
    _cache(_config(tmp_path, demo_assets, tiny_teacher, [_write(data, "first.jsonl", lines[:7])]))
    forwards.clear()
    grown = _config(tmp_path, demo_assets, tiny_teacher, [_write(data, "all.jsonl", lines)])
    out = _cache(grown, capsys)
    assert "10 rows: 7 reused, 3 new, 0 changed (re-cached), 0 skipped" in out
    assert sum(forwards) == 3
    fresh = _config(tmp_path, demo_assets, tiny_teacher, [str(data / "all.jsonl")], cache="fresh")
    _cache(fresh)
    _assert_equal_caches(tmp_path / "cache" / "train", tmp_path / "fresh" / "train")
    forwards.clear()
    out = _cache(grown, capsys, compact=True)  # nothing to compute; the compacted cache is the same
    assert "10 rows: 10 reused, 0 new, 0 changed (re-cached), 0 skipped" in out and not forwards
    _assert_equal_caches(tmp_path / "cache" / "train", tmp_path / "fresh" / "train")


def test_an_edited_caption_and_an_edited_image_are_refused_then_recached(
    demo_assets: dict[str, Path],
    tiny_teacher: Path,
    tmp_path: Path,
    data: Path,
    forwards: list[int],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.errors import CacheMismatchError

    lines = _lines(data)[:8]
    cfg = _config(tmp_path, demo_assets, tiny_teacher, [_write(data, "t.jsonl", lines)])
    _cache(cfg)
    caption = json.loads(lines[2])
    caption["messages"][-1]["content"] += " it is edited."
    lines[2] = json.dumps(caption)
    _write(data, "t.jsonl", lines)
    image = data / json.loads(lines[3])["images"][0]
    with Image.open(image) as im:
        edited = im.convert("RGB").copy()
    edited.putpixel((0, 0), (255, 0, 255) if edited.getpixel((0, 0)) != (255, 0, 255) else (0, 0, 0))
    edited.save(image)  # same size: only the image bytes tell
    for sid, field in ((caption["sample_id"], "input_ids"), (json.loads(lines[3])["sample_id"], "image")):
        with pytest.raises(CacheMismatchError, match=rf"sample '{sid}': .*{field}.*run `distill cache`"):
            _bound_rows(cfg, only=sid)
    from pipeline.teacher.incremental import preview
    from pipeline.teacher.stage import plan_split

    plan = plan_split(cfg, "train")  # what `distill cache --dry-run` prints, before any forward
    keyed = preview(plan, tmp_path / "cache" / "train", _encoder(cfg))
    assert keyed.line(plan.rows_in) == "8 rows: 6 reused, 0 new, 2 changed (to re-cache), 0 to skip"
    forwards.clear()
    out = _cache(cfg, capsys)
    assert "8 rows: 6 reused, 0 new, 2 changed (re-cached), 0 skipped" in out and sum(forwards) == 2
    assert len(_bound_rows(cfg)) == 8  # every row now matches its cache row
    _cache(_config(tmp_path, demo_assets, tiny_teacher, [str(data / "t.jsonl")], cache="fresh"))
    _assert_equal_caches(tmp_path / "cache" / "train", tmp_path / "fresh" / "train")
    manifest = json.loads((tmp_path / "cache" / "train" / "manifest.json").read_text())
    assert manifest["storage"] == {"stored_rows": 10, "superseded": 2}


def _bound_rows(cfg: Any, only: str | None = None) -> list[Any]:
    """What training does before its first step: bind the split to the cache, then encode every row
    and check it against its cache row (``EncodedDataset``)."""
    from pipeline.cache.policy import CachePolicy
    from pipeline.encoding import RowEncoder
    from pipeline.splits import open_split_cache
    from pipeline.train.coverage import bind_to_cache, load_split
    from pipeline.train.data import EncodedDataset

    encoder = RowEncoder.from_config(cfg)
    cache = open_split_cache(cfg, "train", CachePolicy.FINGERPRINT, encoder=encoder)
    split = bind_to_cache(load_split("train", cfg.data.dataset), cache)
    rows = [r for r in split.rows if only is None or r.sample_id == only]
    ds = EncodedDataset(rows, encoder, cache)
    return [ds[i] for i in range(len(ds))]


def test_subset_reordered_removed_and_superset_rows_are_bound_with_counts(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path, data: Path
) -> None:
    from pipeline.cache.policy import CachePolicy
    from pipeline.errors import CacheMismatchError
    from pipeline.splits import open_split_cache
    from pipeline.train.coverage import bind_to_cache, load_split

    lines = _lines(data)[:10]
    _cache(_config(tmp_path, demo_assets, tiny_teacher, [_write(data, "t.jsonl", lines[:8])]))
    cases = {
        "subset": (lines[:5], 5, 3),
        "reordered": (lines[:8][::-1], 8, 0),
        "removed": (lines[:2] + lines[5:8], 5, 3),
    }
    for name, (rows, used, unused) in cases.items():
        cfg = _config(tmp_path, demo_assets, tiny_teacher, [_write(data, f"{name}.jsonl", rows)])
        cache = open_split_cache(cfg, "train", CachePolicy.FINGERPRINT, encoder=_encoder(cfg))
        split = bind_to_cache(load_split("train", cfg.data.dataset), cache)
        assert (split.rows_in, len(split.rows), split.unused_cache_rows) == (len(rows), used, unused), name
        assert {r.sample_id for r in split.rows} == {json.loads(x)["sample_id"] for x in rows}
    superset = _config(tmp_path, demo_assets, tiny_teacher, [_write(data, "superset.jsonl", lines)])
    cache = open_split_cache(superset, "train", CachePolicy.FINGERPRINT, encoder=_encoder(superset))
    with pytest.raises(CacheMismatchError, match=r"covers 8 of the 10 rows .*Run `distill cache`"):
        bind_to_cache(load_split("train", superset.data.dataset), cache)


def _encoder(cfg: Any) -> Any:
    from pipeline.encoding import RowEncoder

    return RowEncoder.from_config(cfg)


def test_a_skipped_row_keeps_its_skip_while_it_is_unchanged(
    demo_assets: dict[str, Path],
    tiny_teacher: Path,
    tmp_path: Path,
    data: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import pipeline.encoding as encoding

    lines = _lines(data)[:4]
    long = json.loads(lines[0])
    long["sample_id"] = "too-long"
    long["messages"][-1]["content"] = " ".join(["a large red circle"] * 400)  # over max_length 512
    lines.append(json.dumps(long))
    cfg = _config(tmp_path, demo_assets, tiny_teacher, [_write(data, "t.jsonl", lines)])
    _cache(cfg)
    encoded: list[str] = []
    real = encoding.RowEncoder.encode
    monkeypatch.setattr(
        encoding.RowEncoder,
        "encode",
        lambda self, row, *a, **k: encoded.append(row.sample_id) or real(self, row, *a, **k),
    )
    out = _cache(cfg, capsys)
    # (the compatibility check encodes a few rows of its own; the skipped row is never encoded again)
    assert "5 rows: 4 reused, 0 new, 0 changed (re-cached), 1 skipped" in out and "too-long" not in encoded
    manifest = json.loads((tmp_path / "cache" / "train" / "manifest.json").read_text())
    assert [(r["sample_id"], r["reason"]) for r in manifest["skipped"]] == [
        ("too-long", "truncated_by_max_length")
    ]


def test_a_cache_of_the_first_format_extends_in_place(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path, data: Path, forwards: list[int]
) -> None:
    from tests.cache.helpers import downgrade_to_first_format

    lines = _lines(data)[:8]
    _cache(_config(tmp_path, demo_assets, tiny_teacher, [_write(data, "t.jsonl", lines[:6])]))
    downgrade_to_first_format(tmp_path / "cache" / "train")
    grown = _config(tmp_path, demo_assets, tiny_teacher, [_write(data, "t.jsonl", lines)])
    assert (
        len(_bound_rows(_config(tmp_path, demo_assets, tiny_teacher, [_write(data, "s.jsonl", lines[:6])])))
        == 6
    )
    forwards.clear()
    _cache(grown)  # old rows have no digest: encoded and compared, not forwarded
    assert sum(forwards) == 2
    g = json.loads((tmp_path / "cache" / "train" / "manifest.json").read_text())["generations"]
    assert [(e["generation"], e["reused"], e["new"]) for e in g] == [(0, 0, 6), (1, 6, 2)]
    _cache(_config(tmp_path, demo_assets, tiny_teacher, [str(data / "t.jsonl")], cache="fresh"))
    _assert_equal_caches(tmp_path / "cache" / "train", tmp_path / "fresh" / "train")


@pytest.mark.slow
def test_two_dataset_files_over_one_cache_train(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path, data: Path, forwards: list[int]
) -> None:
    from pipeline.train.coverage import REPORT_NAME
    from pipeline.train.launcher import run_training

    lines = _lines(data)[:12]
    a, b = _write(data, "a.jsonl", lines[:8]), _write(data, "b.jsonl", lines[8:])
    _cache(_config(tmp_path, demo_assets, tiny_teacher, [a]))
    forwards.clear()
    both = _config(tmp_path, demo_assets, tiny_teacher, [a, b], max_steps=1)
    _cache(both)
    assert sum(forwards) == 4  # b's rows only
    run_training(both)
    report = json.loads((Path(both.train.output_dir) / REPORT_NAME).read_text())["train"]
    assert (report["rows_in"], report["rows_used"], report["unused_cache_rows"]) == (12, 12, 0)
    only_b = _config(tmp_path, demo_assets, tiny_teacher, [b], max_steps=1)
    run_training(only_b)
    report = json.loads((Path(only_b.train.output_dir) / REPORT_NAME).read_text())["train"]
    assert (report["rows_in"], report["rows_used"], report["unused_cache_rows"]) == (4, 4, 8)


# SIGKILL at a chosen point of an incremental run: a child process patches one writer method to kill
# itself when first called, so each point is hit exactly (polling the directory races a tiny teacher).
_KILLER = """
import os, signal, sys
from pipeline.cache import writer as w
from pipeline.cache import merge as m
point = sys.argv[1]
def killing(real, after):
    def f(*a, **k):
        if after:
            out = real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)
            return out
        os.kill(os.getpid(), signal.SIGKILL)
    return f
if point == "superseded":
    w.CacheWriter.supersede = killing(w.CacheWriter.supersede, True)
elif point == "first_shard":
    w.CacheWriter._seal = killing(w.CacheWriter._seal, True)
elif point == "merge":
    w.merge_rank_manifests = killing(m.merge_rank_manifests, False)
from pipeline.cli import main
sys.exit(main(["cache", "--config", sys.argv[2]]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("point", ["superseded", "first_shard", "merge"])
def test_an_incremental_run_killed_resumes_to_a_fresh_cache(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path, data: Path, point: str, one_thread: None
) -> None:
    # the killed run (one thread) writes rows that the resumed cache keeps
    lines = _lines(data)[:10]
    _cache(_config(tmp_path, demo_assets, tiny_teacher, [_write(data, "t.jsonl", lines[:7])]))
    edited = json.loads(lines[1])
    edited["messages"][-1]["content"] += " edited."
    lines[1] = json.dumps(edited)
    grown = _config(tmp_path, demo_assets, tiny_teacher, [_write(data, "t.jsonl", lines)])
    cfg_path = grown.source_files[-1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", _KILLER, point, str(cfg_path)], env=env, capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    manifest = json.loads((tmp_path / "cache" / "train" / "manifest.json").read_text())
    assert len(manifest["generations"]) == 1  # the killed generation never finished
    _cache(grown)
    manifest = json.loads((tmp_path / "cache" / "train" / "manifest.json").read_text())
    g = manifest["generations"][-1]
    assert (g["rows_in"], g["reused"], g["new"], g["changed"], g["skipped"]) == (10, 6, 3, 1, 0)
    _cache(_config(tmp_path, demo_assets, tiny_teacher, [str(data / "t.jsonl")], cache="fresh"))
    _assert_equal_caches(tmp_path / "cache" / "train", tmp_path / "fresh" / "train")


@pytest.mark.slow
def test_an_incremental_run_under_torchrun_equals_a_fresh_cache(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path, data: Path, one_thread: None
) -> None:
    # the ranks below run one thread each
    lines = _lines(data)[:12]
    _cache(_config(tmp_path, demo_assets, tiny_teacher, [_write(data, "t.jsonl", lines[:8])]))
    edited = json.loads(lines[5])
    edited["messages"][-1]["content"] += " edited."
    lines[5] = json.dumps(edited)
    grown = _config(tmp_path, demo_assets, tiny_teacher, [_write(data, "t.jsonl", lines)])
    torchrun = Path(sys.executable).with_name("torchrun")
    # --standalone: a free rendezvous port on localhost, never a fixed one another run may hold
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "pipeline.cli", "cache"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*cmd, "--config", str(grown.source_files[-1])], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "12 rows: 7 reused, 4 new, 1 changed (re-cached), 0 skipped" in done.stderr
    assert list((tmp_path / "cache" / "train").glob("shard-r01-*.arrow"))  # rank 1 cached its share
    _cache(_config(tmp_path, demo_assets, tiny_teacher, [str(data / "t.jsonl")], cache="fresh"))
    _assert_equal_caches(tmp_path / "cache" / "train", tmp_path / "fresh" / "train")
