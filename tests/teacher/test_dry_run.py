"""``distill cache --dry-run`` against the real cache stage on the same data, and its estimator.

Counts are exact and the prediction lands within 10% of the real cache's shard bytes (bytes do not
depend on how busy the machine is). Time is not asserted against a clock here: the estimator's
arithmetic is tested on injected timings, and its accuracy on a real run is a bench figure
(``distill bench dry-run``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.teacher.dry_run import Measurement, SplitCounts, fastest, predict
from tests.conftest import gkd_config, write_config


def _counts(tokens: int, targets: int, written: int = 0) -> SplitCounts:
    return SplitCounts(
        rows=10,
        encodable=10,
        targets=targets,
        tokens=tokens,
        skipped_by_reason={},
        tokens_by_row=[],
        written=written,
    )


def test_time_is_the_line_through_two_sizes() -> None:
    """2 s fixed + 1 ms per token, measured at 100 and 600 tokens, predicts 2 + 5 s for 5000 tokens;
    the run-once teacher hash is added as given."""
    small = Measurement(rows=2, targets=20, tokens=100, bytes=3000, shards=1, seconds=2.1)
    large = Measurement(rows=12, targets=120, tokens=600, bytes=8000, shards=1, seconds=2.6)
    p = predict(_counts(tokens=5000, targets=1000), small, large, shard_bytes=2**30, once_s=1.5)
    assert p["split_fixed_s"] == pytest.approx(2.0) and p["seconds_per_1k_tokens"] == pytest.approx(1.0)
    assert p["seconds"] == pytest.approx(1.5 + 2.0 + 5.0)
    # bytes: 2000 per shard + 50 per target
    assert p["bytes"] == 2000 + 50 * 1000 and p["shards"] == 1


def test_written_rows_add_their_measured_seconds_per_row() -> None:
    small = Measurement(rows=2, targets=20, tokens=100, bytes=3000, shards=1, seconds=2.1)
    large = Measurement(rows=12, targets=120, tokens=600, bytes=8000, shards=1, seconds=2.6)
    written = Measurement(rows=4, targets=40, tokens=0, bytes=4000, shards=1, seconds=8.0)
    p = predict(_counts(tokens=5000, targets=1000, written=6), small, large, 2**30, written=written)
    assert p["seconds"] == pytest.approx(2.0 + 5.0 + 6 * 2.0)
    assert p["targets"] == 1000 + 6 * 10 and p["cached"] == 16


def test_fastest_of_repeats_ignores_a_busy_moment() -> None:
    """A run that met another process (5x slower) does not move the estimate: the fastest run counts."""
    seconds = iter([5.0, 1.0, 1.1, 1.2])
    calls: list[float] = []

    def run() -> Measurement:
        calls.append(t := next(seconds))
        return Measurement(rows=8, targets=80, tokens=400, bytes=1000, shards=1, seconds=t)

    m = fastest(run, repeats=3)
    assert len(calls) == 3 and m.seconds == 1.0 and (m.rows, m.bytes) == (8, 1000)
    assert fastest(run, repeats=0).seconds == 1.2 and len(calls) == 4  # at least once


@pytest.mark.parametrize("encoding", ["quantized", "fp32"])
def test_dry_run_predicts_counts_and_bytes_of_the_real_stage(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path, encoding: str
) -> None:
    from pipeline.cache.cachedir import read_json
    from pipeline.config import load_config
    from pipeline.encoding import RowEncoder
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
    predicted = run_dry_run(cfg, split="all", measure_batches=3, repeats=1)
    assert not (tmp_path / "cache").exists()  # a dry run writes nothing where the cache goes
    teacher = load_teacher(cfg)
    encoder = RowEncoder.from_config(cfg)
    for split in ("train", "val"):
        plan = plan_split(cfg, split)  # the stage checks rows before loading the model
        counts = cache_split(cfg, split, teacher, encoder, plan=plan, progress=False)
        shards = read_json(tmp_path / "cache" / split / "manifest.json")["shards"]
        real_bytes = sum(s["bytes"] for s in shards)
        p = predicted["splits"][split]
        assert (p["rows"], p["cached"], p["targets"]) == (
            counts["rows_in"],
            counts["cached"],
            counts["targets"],
        )
        assert abs(p["bytes"] - real_bytes) <= 0.10 * real_bytes, (split, p["bytes"], real_bytes)
        assert p["seconds"] > 0


def test_dry_run_estimates_teacher_written_rows(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path: Path
) -> None:
    """Prompt-only rows have no response before the teacher writes it: the dry run counts them apart and
    scales a measurement of written rows alone (response length, seconds per row) to the split."""
    from pipeline.cache.cachedir import read_json
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
    predicted = run_dry_run(cfg, split="train", measure_batches=3, repeats=1)["splits"]["train"]
    teacher = load_teacher(cfg)
    encoder = RowEncoder.from_config(cfg)
    plan = plan_split(cfg, "train")
    written = sum(1 for r in plan.usable if not r.response())
    counts = cache_split(cfg, "train", teacher, encoder, plan=plan, progress=False)
    real_bytes = sum(s["bytes"] for s in read_json(tmp_path / "cache" / "train" / "manifest.json")["shards"])
    assert written > 100 and predicted["written"] == written  # the pool: counted, not skipped as empty
    assert (predicted["rows"], predicted["cached"]) == (counts["rows_in"], counts["cached"])
    assert abs(predicted["targets"] - counts["targets"]) <= 0.10 * counts["targets"]
    assert abs(predicted["bytes"] - real_bytes) <= 0.10 * real_bytes, (predicted["bytes"], real_bytes)
