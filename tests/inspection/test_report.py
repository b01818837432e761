"""The report of a real cache (the session's tiny teacher over the demo data): images beside tokens,
the worst-first index, histograms, ``--compare``, and token text found through the manifest's sources.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.cache.reader import CacheReader
from pipeline.inspection.command import run_inspect
from pipeline.inspection.figures import rank_buckets
from pipeline.inspection.summary import profile, rank_rows
from pipeline.inspection.tokens import RowStats


def cache_dir(config: Path, split: str = "train") -> Path:
    return Path(yaml.safe_load(config.read_text())["custom"]["teacher_cache"]) / split


def test_manifest_records_where_the_inputs_were(default_cache: Path, demo_assets: dict[str, Path]) -> None:
    manifest = CacheReader(cache_dir(default_cache)).manifest
    assert manifest["sources"] == {
        "tokenizer": str(demo_assets["student"].resolve()),
        "dataset": str(demo_assets["train"].resolve()),
        "config": [str(default_cache.resolve())],
    }
    assert "sources" not in json.dumps(manifest["fingerprint"])  # paths are not content


def test_inspect_without_arguments_prints_token_text(
    default_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    root = cache_dir(default_cache)
    sid = CacheReader(root).sample_ids[0]
    assert main(["inspect", str(root), "--sample", sid]) == 0
    out = capsys.readouterr().out
    assert "recorded at cache time, same hash" in out and "<|im_end|>" in out
    table = out.split(f"sample {sid}")[1].splitlines()[2:]
    assert table and not any(line.split()[1].startswith("#") for line in table)


def _copy_with_tokenizer(root: Path, tmp_path: Path, tokenizer: str) -> Path:
    copy = tmp_path / "copy" / "train"
    shutil.copytree(root, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["sources"]["tokenizer"] = tokenizer
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_moved_or_changed_tokenizer_says_how_to_point_at_it(
    default_cache: Path, demo_assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = cache_dir(default_cache)
    gone = _copy_with_tokenizer(root, tmp_path / "a", str(tmp_path / "nowhere"))
    assert run_inspect(gone, sample=CacheReader(gone).sample_ids[0]) == 0
    out = capsys.readouterr().out
    assert "is gone: pass --tokenizer DIR" in out and "#" in out.split("teacher top-5")[1]
    changed = tmp_path / "tok"
    shutil.copytree(demo_assets["student"], changed)
    cfg_file = changed / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_file.read_text())
    tok_cfg["chat_template"] = "{{ messages[0]['content'] }}"
    cfg_file.write_text(json.dumps(tok_cfg))
    (changed / "chat_template.jinja").unlink(missing_ok=True)
    moved = _copy_with_tokenizer(root, tmp_path / "b", str(changed))
    assert run_inspect(moved) == 0
    out = capsys.readouterr().out
    assert "changed since caching" in out and "chat_template_sha256" in out and "--tokenizer" in out


def _thumbs(page: str) -> list[Image.Image]:
    uris = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="image', page)
    return [Image.open(io.BytesIO(base64.b64decode(u))) for u in uris]


def test_report_shows_images_context_index_and_histograms(default_cache: Path, tmp_path: Path) -> None:
    root = cache_dir(default_cache)
    reader = CacheReader(root)
    out = tmp_path / "report.html"
    assert run_inspect(root, html=out, limit=5) == 0
    page = out.read_text()
    assert "<script" not in page and "http" not in page  # one self-contained, offline file
    thumbs = _thumbs(page)
    assert len(thumbs) == 5 and all(t.size == (168, 168) for t in thumbs)  # 56x56 scaled 3x
    first = np.asarray(thumbs[0])
    assert (first[0:3, 0:3] == first[0, 0]).all()  # nearest neighbour: one source pixel = 3x3 block
    # Every row of the cache is in the index, worst mean p(target) first, each linking to its section.
    index = re.findall(r'<tr><td>\d+</td><td><a href="#([^"]+)">', page)
    assert sorted(index) == sorted(reader.sample_ids)
    ranked = [r.sample_id for r in rank_rows(profile(reader).rows)]
    assert index == ranked
    for sid in ranked[:5]:
        assert f'<h2 id="{sid}">' in page
    # Re-encoded through the recorded config: visual tokens, the grid, greyed context, no hash warning.
    meta = re.findall(r"visual tokens (\d+); grid \(t x h x w\) ([\dx; ]+)</div>", page)
    assert len(meta) == 5 and all(int(n) > 0 for n, _ in meta)
    assert all(int(n) * 4 == np.prod([int(v) for v in g.split("x")]) for n, g in meta)  # merge 2x2
    assert page.count('class="img-tok"') == 5 and page.count('class="ctx"') > 5 * 5
    assert "hashes differently" not in page
    assert page.count('class="hist"') == 1


def test_compare_and_figures(
    default_cache: Path, exact_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run_inspect(cache_dir(default_cache), compare=cache_dir(exact_cache), figures=tmp_path / "fig") == 0
    )
    out = capsys.readouterr().out
    assert out.count("supervised tokens") == 2 and "compared with" in out
    png = Image.open(tmp_path / "fig" / "histograms.png")
    assert png.size[0] > 600 and len(np.unique(np.asarray(png.convert("L")))) > 10
    svg = (tmp_path / "fig" / "histograms.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg and str(cache_dir(exact_cache)) in svg


def test_rank_rows_puts_the_worst_first() -> None:
    def row(sid: str, p: float, tail: float, outside: int, n: int = 3) -> RowStats:
        return RowStats(sid, 10, n, p, p, tail, tail, 1.0, outside)

    rows = [
        row("a", 0.9, 1e-3, 0),
        row("b", 0.2, 1e-5, 2),
        row("c", 0.5, 1e-1, 1),
        row("empty", np.nan, np.nan, 0, 0),
    ]
    assert [r.sample_id for r in rank_rows(rows)] == ["b", "c", "a", "empty"]
    assert [r.sample_id for r in rank_rows(rows, "tail")] == ["c", "a", "b", "empty"]
    assert [r.sample_id for r in rank_rows(rows, "outside")] == ["b", "c", "a", "empty"]
    with pytest.raises(ValueError, match="unknown ranking"):
        rank_rows(rows, "nope")


def test_rank_buckets_cover_every_rank() -> None:
    ranks = np.array([0, 0, 1, 2, 3, 4, 7, 8, 15, -1, -1])
    labels, counts = rank_buckets(ranks, top_k=16)
    assert labels == ["1", "2", "3-4", "5-8", "9-16", "out"]
    assert counts.tolist() == [2, 1, 2, 2, 2, 2] and counts.sum() == len(ranks)
