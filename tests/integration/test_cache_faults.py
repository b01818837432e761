"""Faults a long ``distill cache`` meets, end to end on the tiny demo models: a SIGTERM (preemption),
repaired rows behind old skip records, a ``--limit`` below what an unfinished cache holds, a full disk
under the progress bar."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from tests.conftest import gkd_config, write_config
from tests.integration.test_cache_stage import assert_same_cache, cache_with_signal, small_shard_config

pytestmark = pytest.mark.slow  # caches with real tiny models


def test_sigterm_seals_the_open_shard_says_so_and_the_rerun_equals_a_fresh_cache(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path
) -> None:
    from pipeline.cache.format import PARTS_DIR

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    stopped = small_shard_config(demo_assets, tiny_teacher, tmp_path, "stopped")
    root = tmp_path / "stopped" / "train"
    proc = cache_with_signal(stopped, "SIGTERM", tmp_path, env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(
        f"error: CacheInterrupted: {root}: distill cache stopped by SIGTERM; written so far: "
    ), proc.stderr[-2000:]
    assert errors[0].endswith("(the open shard sealed); run the same command again: it resumes from there")
    assert "Traceback" not in proc.stderr
    # Every shard sealed and recorded: no temporary shard, the part lists exactly the shards on disk.
    assert list(root.glob("*.tmp*")) == [] and not (root / "manifest.json").exists()
    part = json.loads((root / PARTS_DIR / "rank-00.json").read_text())
    on_disk = sorted(p.name for p in root.glob("shard-*.arrow"))
    assert len(on_disk) >= 2  # the first shard and the one open when the signal came
    assert sorted(s["file"] for s in part["shards"]) == on_disk

    assert main(["cache", "--config", str(stopped)]) == 0
    fresh = small_shard_config(demo_assets, tiny_teacher, tmp_path, "fresh")
    assert main(["cache", "--config", str(fresh)]) == 0
    assert_same_cache(root, tmp_path / "fresh" / "train")


def test_limit_below_what_an_unfinished_cache_holds_is_a_note(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cache.shards import read_shard_index

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    config = small_shard_config(demo_assets, tiny_teacher, tmp_path, "cache")
    root = tmp_path / "cache" / "train"
    assert cache_with_signal(config, "SIGKILL", tmp_path, env).returncode == -signal.SIGKILL
    held = sum(len(read_shard_index(p)[1]) for p in root.glob("shard-*.arrow"))
    assert held > 1
    before = sorted(p.name for p in root.iterdir())
    assert main(["cache", "--config", str(config), "--limit", "1"]) == 0
    out = capsys.readouterr().err
    assert (
        f"[cache train] {root} holds an unfinished run's {held} rows ({held} cached, 0 skipped), "
        f"{held - 1} of them past --limit 1: left as it is; run the same command without --limit to "
        "finish it"
    ) in out
    assert sorted(p.name for p in root.iterdir()) == before
    assert main(["cache", "--config", str(config)]) == 0  # and the unfinished run completes
    assert (root / "manifest.json").is_file()


def _rows_with_two_bad(
    demo_assets: dict[str, Path], tmp_path: Path
) -> tuple[list[dict[str, Any]], Path, dict[str, Any]]:
    """The demo's train rows (images by absolute path) plus one whose image is missing and one whose
    response is missing; returns the rows, the missing image's path and the row both were made from."""
    rows = []
    for line in demo_assets["train"].read_text().splitlines():
        row = json.loads(line)
        row["images"] = [str((demo_assets["train"].parent / p).resolve()) for p in row.get("images", [])]
        rows.append(row)
    source = next(r for r in rows if len(r["images"]) == 1)
    gone = tmp_path / "gone.png"
    rows.append({**source, "sample_id": "gone-0", "images": [str(gone)]})
    prompt = [m for m in source["messages"] if m["role"] != "assistant"]
    rows.append({**source, "sample_id": "empty-0", "messages": prompt})
    return rows, gone, source


def test_repaired_rows_behind_skip_records_are_cached_and_counts_reconcile(
    demo_assets: dict[str, Path], tmp_path: Path
) -> None:
    from pipeline.cache.reader import CacheReader

    rows, gone, source = _rows_with_two_bad(demo_assets, tmp_path)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = gkd_config(demo_assets, demo_assets["teacher"], tmp_path / "cache", tmp_path / "run")
    cfg["data"] = {"dataset": [str(data)], "max_length": 512}
    config = write_config(tmp_path / "cfg.yaml", cfg)
    argv = ["cache", "--config", str(config), "--split", "train"]
    assert main(argv) == 0
    root = tmp_path / "cache" / "train"
    skipped = {r["sample_id"]: r["reason"] for r in CacheReader(root).manifest["skipped"]}
    assert skipped == {"gone-0": "missing_image", "empty-0": "prompt_only_in_labelled_split"}

    # Repair both: the image is restored, the response filled in.
    gone.write_bytes(Path(source["images"][0]).read_bytes())
    rows[-1]["messages"] = source["messages"]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(argv) == 0
    reader = CacheReader(root)
    assert {"gone-0", "empty-0"} <= set(reader.sample_ids)
    assert reader.manifest["skipped"] == []
    counts, last = reader.manifest["counts"], reader.manifest["generations"][-1]
    assert counts["cached"] + counts["skipped"] == len(rows)
    assert (last["reused"], last["new"], last["skipped"]) == (len(rows) - 2, 2, 0)
