"""``distill bench dry-run``: one round on the demo prints its ratios (no clock thresholds here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import gkd_config, write_config


def test_dry_run_bench_reports_predicted_over_real(
    demo_assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.config import load_config
    from pipeline.teacher.stage_bench import bench_dry_run

    raw = gkd_config(demo_assets, demo_assets["teacher"], tmp_path / "cache", tmp_path / "run")
    cfg = load_config(write_config(tmp_path / "c.yaml", raw))
    out = bench_dry_run(cfg, rounds=1, repeats=1)
    assert [r["split"] for r in out["rounds"]] == ["train", "val"]
    assert all(r["real_s"] > 0 and r["predicted_s"] > 0 for r in out["rounds"])
    assert abs(out["median_bytes_ratio"] - 1) <= 0.10  # bytes do not depend on the machine's load
    assert not (tmp_path / "cache").exists()  # the bench writes its caches to a temporary directory
