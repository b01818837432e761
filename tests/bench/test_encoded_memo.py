"""``distill bench encoded-memo``: one round per mode, each in its own subprocess, prints its ratio."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import base_config, write_config


@pytest.mark.slow
def test_encoded_memo_bench_times_both_modes_and_reports_their_ratio(
    demo_assets: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.bench.encoded_memo import bench_encoded_memo

    config = write_config(tmp_path / "c.yaml", base_config(demo_assets, tmp_path / "run"))
    out = bench_encoded_memo(config, steps=14, rounds=1, out=tmp_path / "bench", mode="sft")  # > 1 epoch
    assert out["kept_train_s"] > 0 and out["none_train_s"] > 0
    assert out["kept_over_none_rounds"] == [out["kept_train_s"] / out["none_train_s"]]
    # What the ratio is about: with kept encodings each of the 48 train rows is encoded once; without,
    # every fetch is an encoding (14 steps x 4 rows, past one epoch).
    assert (out["kept_encodes"], out["none_encodes"]) == (48, 14 * 4), out
    assert {p.name for p in (tmp_path / "bench" / "r0").iterdir()} == {"kept", "none"}
