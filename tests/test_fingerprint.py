"""The cache fingerprint records what the cache stores."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import gkd_config, write_config


def test_top_k_above_the_vocabulary_is_recorded_as_the_effective_k(
    demo_assets: dict[str, Path], tmp_path: Path
) -> None:
    """k above the real vocabulary keeps every real id: the cache is the one for k = the vocabulary
    size, so a run asking for either must match it (it used to record 100000 and refuse 422)."""
    from pipeline.config import load_config
    from pipeline.encoding import RowEncoder
    from pipeline.fingerprint import build_fingerprint

    def fingerprint(top_k: int) -> dict:
        raw = gkd_config(demo_assets, demo_assets["teacher"], tmp_path / "cache", tmp_path / "run")
        raw["custom"]["top_k"] = top_k
        cfg = load_config(write_config(tmp_path / f"k{top_k}.yaml", raw))
        return build_fingerprint(cfg, RowEncoder.from_config(cfg))

    vocab = fingerprint(16)["tokenizer"]["len"]
    assert fingerprint(100_000)["top_k"] == vocab == fingerprint(vocab)["top_k"]
    assert fingerprint(100_000) == fingerprint(vocab)
    assert fingerprint(16)["top_k"] == 16


def test_a_cache_that_recorded_the_requested_k_keeps_working() -> None:
    """Caches from before the effective k was recorded hold e.g. 100000 for a 422-token vocabulary."""
    from pipeline.cache.cachedir import Manifest
    from pipeline.splits import accept_recorded_top_k

    expected = {"top_k": 422, "tokenizer": {"len": 422}}
    assert accept_recorded_top_k(expected, Manifest({"fingerprint": {"top_k": 100_000}}))["top_k"] == 100_000
    assert (
        accept_recorded_top_k(expected, Manifest({"fingerprint": {"top_k": 64}}))["top_k"] == 422
    )  # still refused
    smaller = {"top_k": 16, "tokenizer": {"len": 422}}
    assert accept_recorded_top_k(smaller, Manifest({"fingerprint": {"top_k": 100_000}}))["top_k"] == 16
