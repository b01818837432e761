"""Damaged, foreign and mismatched caches each give their typed error, naming the shard or field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cache.format import MANIFEST_NAME, PARTS_DIR
from pipeline.cache.reader import CacheReader
from pipeline.cache.writer import CacheWriter
from pipeline.errors import CacheFormatError, CacheMismatchError, DistillError
from tests.cache.helpers import FINGERPRINT, random_sample


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "cache"
    with CacheWriter(root, fingerprint=FINGERPRINT, top_k=8, vocab_size=5000, shard_bytes=2500) as w:
        for i in range(12):
            w.add(random_sample(rng, f"s{i}", 40, 8, 5000))
        w.skip("s-bad", "missing_image", "gone.png")
        w.finalize(rows_in=13)
    assert len(list(root.glob("shard-*.arrow"))) >= 3
    return root


def shards(root: Path) -> list[Path]:
    return sorted(root.glob("shard-*.arrow"))


@pytest.mark.parametrize("offset", [0.1, 0.5, 0.97])
def test_bit_flip_is_a_format_error_naming_the_shard(cache: Path, offset: float) -> None:
    victim = shards(cache)[1]
    data = bytearray(victim.read_bytes())
    data[int(len(data) * offset)] ^= 0x10
    victim.write_bytes(bytes(data))
    with pytest.raises(CacheFormatError, match=f"{victim.name}.*checksum mismatch"):
        CacheReader(cache)
    # lazily: opening may or may not notice (it reads sample_ids), decoding that shard always does
    try:
        reader = CacheReader(cache, verify="lazy")
    except CacheFormatError as err:
        assert victim.name in str(err)
        return
    reader.get("s0")  # an intact shard still reads
    victim_ids = [sid for sid in reader.sample_ids if reader._index[sid][0] == 1]
    with pytest.raises(CacheFormatError, match=victim.name):
        reader.get(victim_ids[0])
    with pytest.raises(CacheFormatError, match=victim.name):
        reader.batch(["s0", victim_ids[-1]])


@pytest.mark.parametrize("verify", ["open", "lazy"])
def test_truncated_or_missing_shard(cache: Path, verify: str) -> None:
    victim = shards(cache)[-1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheFormatError, match=f"{victim.name}.*truncated"):
        CacheReader(cache, verify=verify)
    victim.unlink()
    with pytest.raises(CacheFormatError, match=f"{victim.name}.*missing"):
        CacheReader(cache, verify=verify)


def test_foreign_format_version(cache: Path) -> None:
    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    (cache / MANIFEST_NAME).write_text(json.dumps({**manifest, "format_version": 2}))
    with pytest.raises(CacheFormatError, match="version 2, this reader reads version 1"):
        CacheReader(cache)
    (cache / MANIFEST_NAME).write_text(
        json.dumps({**manifest, "layout": {**manifest["layout"], "format_version": 0}})
    )
    with pytest.raises(CacheFormatError, match="version 0"):
        CacheReader(cache)
    (cache / MANIFEST_NAME).write_text(json.dumps({**manifest, "format": "something-else"}))
    with pytest.raises(CacheFormatError, match="not a teacher-cache manifest"):
        CacheReader(cache)
    (cache / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(CacheFormatError, match="unreadable"):
        CacheReader(cache)
    (cache / MANIFEST_NAME).write_text(json.dumps(manifest))
    part = cache / PARTS_DIR / "rank-00.json"
    part.write_text(json.dumps({**json.loads(part.read_text()), "format_version": 7}))
    with pytest.raises(CacheFormatError, match="version 7"):
        CacheWriter(cache, fingerprint=FINGERPRINT, top_k=8, vocab_size=5000)


def test_shard_from_another_layout_is_refused(cache: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    other = tmp_path / "other"
    with CacheWriter(other, fingerprint=FINGERPRINT, top_k=8, vocab_size=5000, logprob_encoding="fp32") as w:
        w.add(random_sample(rng, "x", 3, 8, 5000))
    victim, foreign = shards(cache)[0], shards(other)[0]
    victim.write_bytes(foreign.read_bytes())
    manifest = json.loads((cache / MANIFEST_NAME).read_text())
    manifest["shards"][0].update(
        bytes=victim.stat().st_size, sha256=__import__("hashlib").sha256(victim.read_bytes()).hexdigest()
    )
    (cache / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(CacheFormatError, match=f"{victim.name}.*layout differs"):
        CacheReader(cache)


def test_fingerprint_mismatch_lists_each_field(cache: Path) -> None:
    expected = json.loads(json.dumps(FINGERPRINT))
    expected["teacher"]["weights_sha256"] = "00" * 32
    expected["temperature"] = 2.0
    del expected["dtype"]
    with pytest.raises(CacheMismatchError) as info:
        CacheReader(cache, expected_fingerprint=expected)
    assert set(info.value.differences) == {"teacher.weights_sha256", "temperature", "dtype"}
    assert info.value.differences["temperature"] == (2.0, 1.0)
    msg = str(info.value)
    assert (
        "temperature: expected 2.0, cache has 1.0" in msg
        and "dtype: expected '<missing>', cache has 'float32'" in msg
    )
    assert isinstance(info.value, DistillError)
    CacheReader(cache, expected_fingerprint=FINGERPRINT)  # the right one opens


def test_writer_refuses_to_extend_a_cache_built_for_something_else(cache: Path) -> None:
    with pytest.raises(CacheMismatchError, match=r"fingerprint\.temperature: expected 0\.5, cache has 1\.0"):
        CacheWriter(cache, fingerprint={**FINGERPRINT, "temperature": 0.5}, top_k=8, vocab_size=5000)
    with pytest.raises(CacheMismatchError, match=r"layout\.top_k"):
        CacheWriter(cache, fingerprint=FINGERPRINT, top_k=16, vocab_size=5000)
    with pytest.raises(CacheMismatchError, match=r"layout\.logprob_encoding"):
        CacheWriter(cache, fingerprint=FINGERPRINT, top_k=8, vocab_size=5000, logprob_encoding="fp32")


def test_no_manifest(tmp_path: Path) -> None:
    with pytest.raises(CacheFormatError, match=r"no manifest\.json"):
        CacheReader(tmp_path)
    w = CacheWriter(tmp_path, fingerprint=FINGERPRINT, top_k=8, vocab_size=5000)
    w.add(random_sample(np.random.default_rng(0), "a", 2, 8, 5000))
    with pytest.raises(CacheFormatError, match="writers never finished"):
        CacheReader(tmp_path)
