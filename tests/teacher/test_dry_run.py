"""``distill cache --dry-run`` against the real cache stage on the same data.

The prediction must land within 10% of the real cache's shard bytes and within a factor of 2 of the
stage's own wall-clock (model loaded). The demo split is small enough that fixed costs (schema
metadata with the fingerprint, the dataset hash, dataloader start) are a large share; the dry run
separates them by measuring two sizes, which is what this test holds it to. Counts are exact.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import gkd_config, write_config


@pytest.mark.parametrize("encoding", ["quantized", "fp32"])
def test_dry_run_predicts_bytes_and_time_of_the_real_stage(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path, encoding: str
) -> None:
    from pipeline.cache.manifest import read_json
    from pipeline.config import load_config
    from pipeline.encoding import RowEncoder
    from pipeline.fingerprint import _file_hash
    from pipeline.models import load_teacher
    from pipeline.teacher.dry_run import run_dry_run
    from pipeline.teacher.stage import cache_split, plan_split

    custom = {"top_k": 16, "logprob_encoding": encoding}
    cfg = load_config(
        write_config(
            tmp_path / "c.yaml",
            gkd_config(demo_assets, tiny_teacher, tmp_path / "cache", tmp_path / "run", custom=custom),
        )
    )
    predicted = run_dry_run(cfg, split="all", measure_batches=3)
    assert not (tmp_path / "cache").exists()  # a dry run writes nothing where the cache goes
    teacher = load_teacher(cfg)
    encoder = RowEncoder.from_config(cfg)
    _file_hash.cache_clear()  # the real stage hashes the teacher weights once, cold
    for split in ("train", "val"):
        plan = plan_split(cfg, split)  # the stage checks rows before loading the model
        t0 = time.perf_counter()
        counts = cache_split(cfg, split, teacher, encoder, plan=plan, progress=False)
        seconds = time.perf_counter() - t0
        shards = read_json(tmp_path / "cache" / split / "manifest.json")["shards"]
        real_bytes = sum(s["bytes"] for s in shards)
        p = predicted["splits"][split]
        assert (p["rows"], p["cached"], p["targets"]) == (
            counts["rows_in"],
            counts["cached"],
            counts["targets"],
        )
        assert abs(p["bytes"] - real_bytes) <= 0.10 * real_bytes, (split, p["bytes"], real_bytes)
        assert 0.5 <= p["seconds"] / seconds <= 2.0, (split, p["seconds"], seconds)


def test_dry_run_estimates_teacher_written_rows(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path
) -> None:
    """Prompt-only rows have no response before the teacher writes it: the dry run counts them apart and
    scales a measurement of written rows alone (response length, seconds per row) to the split."""
    from pipeline.cache.manifest import read_json
    from pipeline.config import load_config
    from pipeline.encoding import RowEncoder
    from pipeline.models import load_teacher
    from pipeline.teacher.dry_run import run_dry_run
    from pipeline.teacher.stage import cache_split, plan_split

    custom = {
        "top_k": 16,
        "written_responses": "prompt_only",
        "written_max_new_tokens": 10,
        "written_unfinished": "keep",
    }
    raw = gkd_config(demo_assets, tiny_teacher, tmp_path / "cache", tmp_path / "run", custom=custom)
    raw["data"]["dataset"] = [str(demo_assets["labelled_pool"])]
    cfg = load_config(write_config(tmp_path / "c.yaml", raw))
    predicted = run_dry_run(cfg, split="train", measure_batches=3)["splits"]["train"]
    teacher = load_teacher(cfg)
    encoder = RowEncoder.from_config(cfg)
    plan = plan_split(cfg, "train")
    written = sum(1 for r in plan.usable if not r.response())
    t0 = time.perf_counter()
    counts = cache_split(cfg, "train", teacher, encoder, plan=plan, progress=False)
    seconds = time.perf_counter() - t0
    real_bytes = sum(s["bytes"] for s in read_json(tmp_path / "cache" / "train" / "manifest.json")["shards"])
    assert written > 100 and predicted["written"] == written  # the pool: counted, not skipped as empty
    assert (predicted["rows"], predicted["cached"]) == (counts["rows_in"], counts["cached"])
    assert abs(predicted["targets"] - counts["targets"]) <= 0.10 * counts["targets"]
    assert abs(predicted["bytes"] - real_bytes) <= 0.10 * real_bytes, (predicted["bytes"], real_bytes)
    assert 0.5 <= predicted["seconds"] / seconds <= 2.0, (predicted["seconds"], seconds)
