"""``CacheDir`` / ``SplitDir`` / ``Manifest``: the one place that knows a cache directory's layout, read
back against files the writer really wrote."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.cache.cachedir import CacheDir, Manifest
from pipeline.cache.writer import CacheWriter
from pipeline.errors import ConfigError
from tests.cache.helpers import random_sample


def test_the_layout_is_the_one_the_writer_writes(tmp_path: Path) -> None:
    cache = CacheDir(tmp_path / "cache")
    train = cache.split("train")
    assert not train.finished and train.shard_paths() == [] and cache.splits() == []
    rng = np.random.default_rng(0)
    samples = [random_sample(rng, f"s{i:02d}", 5, 4, 100) for i in range(6)]
    with CacheWriter(train.root, fingerprint={"t": 1}, top_k=4, vocab_size=100, shard_bytes=1) as w:
        for s in samples:
            w.add(s)
        w.skip("s99", "missing_image", "images[0]: gone", row_digest="ab")
    assert train.finished and cache.splits() == ["train"]
    written = sorted(p for p in train.root.glob("shard-*.arrow"))
    assert train.shard_paths() == written and len(written) > 1
    record = train.manifest()
    assert record.counts["cached"] == 6 and record.targets == 30
    assert record.shard_bytes == sum(p.stat().st_size for p in written) and len(record.shards) == len(written)
    assert record.skip_digests() == {"s99": "ab"} and record.fingerprint["t"] == 1
    assert train.part_path(0).is_file() and train.skips_path(0).is_file()
    assert train.building_dir == tmp_path / "cache" / ".train.compacting"
    assert cache.resolved_config == tmp_path / "cache" / "resolved_config.yaml"


def test_a_manifest_from_before_a_key_existed_reads_as_empty() -> None:
    old = Manifest({"counts": {"cached": 3}})
    assert (old.generations, old.last_generation, old.superseded_versions, old.placeholder_ids) == (
        [],
        {},
        0,
        {},
    )
    assert old.written_responses is None and old.skipped == [] and old.targets == 0


def test_a_config_without_a_cache_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"custom\.teacher_cache is not set"):
        CacheDir.of(SimpleNamespace(custom=SimpleNamespace(teacher_cache=None)))
