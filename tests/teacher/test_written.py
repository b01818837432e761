"""Teacher-written responses in the cache: written, re-encoded, cached along the re-encoded ids, trained on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.data import Row, read_rows
from pipeline.errors import CacheMismatchError, DataError
from pipeline.teacher.written import PROMPT_ONLY, is_prompt_only, partition_for_written
from tests.conftest import gkd_config, write_config

N_ROWS = 40  # the 32 labelled rows, then 8 prompt-only pool rows


@pytest.fixture(scope="module")
def written_cache(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, dict[str, Any]]:
    """A cache of labelled + pool rows, the pool's responses written by the (briefly trained) teacher."""
    from pipeline.config import load_config
    from pipeline.teacher.stage import run_caching

    root = tmp_path_factory.mktemp("written_cache")
    raw = gkd_config(
        demo_assets,
        tiny_teacher,
        root / "cache",
        root / "run",
        custom={
            "written_responses": "prompt_only",
            "written_max_new_tokens": 10,
            "written_unfinished": "keep",  # a briefly trained teacher rarely stops within 10 tokens
        },
    )
    raw["data"]["dataset"] = [str(demo_assets["labelled_pool"])]
    cfg = load_config(write_config(root / "cfg.yaml", raw))
    counts = run_caching(cfg, split="train", limit=N_ROWS, progress=False)
    return cfg, counts["train"]


def test_pool_rows_are_written_and_labelled_rows_are_not(written_cache: tuple[Any, dict[str, Any]]) -> None:
    from pipeline.cache.reader import CacheReader

    cfg, counts = written_cache
    reader = CacheReader(Path(cfg.custom.teacher_cache) / "train")
    samples = {s.sample_id: s for s in reader.iter_samples()}
    pool = [sid for sid in samples if sid.startswith("pool-")]
    labelled = [sid for sid in samples if sid.startswith("labelled-")]
    assert len(labelled) == 32 and pool, counts
    assert counts["teacher_written"]["written"] == len(pool)
    assert counts["cached"] + counts["skipped"] == N_ROWS
    for sid in labelled:
        assert not samples[sid].teacher_written and samples[sid].written_text == ""
    for sid in pool:
        s = samples[sid]
        assert s.teacher_written and s.written_text and len(s.written_ids) > 0
        # the targets are along the re-encoded response (ending with the end-of-turn)
        assert s.num_targets >= 1


def test_training_reads_the_written_response_with_the_hash_check(
    written_cache: tuple[Any, dict[str, Any]],
) -> None:
    from pipeline.cache.reader import CacheReader
    from pipeline.encoding import RowEncoder
    from pipeline.train.data import EncodedDataset

    cfg, _ = written_cache
    reader = CacheReader(Path(cfg.custom.teacher_cache) / "train")
    rows = {r.sample_id: r for r in read_rows(cfg.data.dataset[0]) if isinstance(r, Row)}
    pool_ids = [sid for sid in reader.sample_ids if sid.startswith("pool-")]
    encoder = RowEncoder.from_config(cfg)
    ds = EncodedDataset([rows[sid] for sid in pool_ids], encoder, reader)
    tok = encoder.tokenizer
    for i, sid in enumerate(pool_ids):
        item = ds[i]
        cached = reader.get(sid)
        labels = np.asarray(item["labels"])
        supervised = labels[labels != -100].tolist()
        assert tok.decode(supervised, skip_special_tokens=True).strip() == cached.written_text
        assert item["teacher"] is cached or item["teacher"].sample_id == sid
    # a different response for the same row is refused by the encoding-hash check
    tampered = replace(reader.get(pool_ids[0]), written_text="a large red circle at the top left.")

    class OneRow:
        def get(self, sid: str) -> Any:
            return tampered

    with pytest.raises(CacheMismatchError, match=pool_ids[0]):
        EncodedDataset([rows[pool_ids[0]]], encoder, OneRow())[0]


def test_retokenized_is_targets_other_than_generated_then_end_of_turn() -> None:
    """Constructed encodings: a row is retokenized exactly when its supervised targets are not the
    generated ids followed by a stop id."""
    from pipeline.encoding import EncodedRow
    from pipeline.teacher.written import _retokenized

    def enc(targets: list[int]) -> EncodedRow:
        return EncodedRow("s", {"input_ids": [1, 2, *targets], "labels": [-100, -100, *targets]}, "h")

    generated, stop = [5, 6, 7], [99]
    cases = {
        (5, 6, 7, 99): False,  # generated then the end-of-turn: as written
        (5, 6, 8, 99): True,  # a merge changed an id
        (5, 67, 99): True,  # a merge changed the length
        (5, 6, 7, 42): True,  # no stop id after the response
        (5, 6, 7): True,  # no end-of-turn at all
    }
    assert {t: _retokenized(enc(list(t)), generated, stop) for t in cases} == cases


def test_retokenized_rows_are_counted(written_cache: tuple[Any, dict[str, Any]]) -> None:
    """The stage's count equals the written rows whose cached targets are not the generated ids then a
    stop id, recomputed from the cache rows."""
    from pipeline.cache.reader import CacheReader
    from pipeline.encoding import RowEncoder
    from pipeline.generation import stop_token_ids

    cfg, counts = written_cache
    reader = CacheReader(Path(cfg.custom.teacher_cache) / "train")
    encoder = RowEncoder.from_config(cfg)
    tok, stops = encoder.tokenizer, stop_token_ids(encoder)
    changed = written = 0
    for s in reader.iter_samples():
        if s.teacher_written:
            written += 1
            m, targets = len(s.written_ids), s.target_ids.tolist()
            as_generated = len(targets) > m and targets[:m] == s.written_ids.tolist() and targets[m] in stops
            changed += not as_generated
            assert tok.decode(s.written_ids.tolist(), skip_special_tokens=True).strip() == s.written_text
    assert written == N_ROWS - 32
    assert counts["teacher_written"]["retokenized"] == changed


def test_changed_generation_setting_is_refused_by_the_fingerprint(
    written_cache: tuple[Any, dict[str, Any]],
) -> None:
    from pipeline.cache.policy import CachePolicy
    from pipeline.encoding import RowEncoder
    from pipeline.splits import open_split_cache

    cfg, _ = written_cache
    encoder = RowEncoder.from_config(cfg)
    cfg_cached = replace(cfg, custom=replace(cfg.custom, allow_partial_cache=True))
    assert open_split_cache(cfg_cached, "train", CachePolicy.FINGERPRINT, encoder=encoder) is not None
    changed = replace(
        cfg_cached, custom=replace(cfg.custom, allow_partial_cache=True, written_max_new_tokens=11)
    )
    with pytest.raises(CacheMismatchError, match="written_responses"):
        open_split_cache(changed, "train", CachePolicy.FINGERPRINT, encoder=encoder)


def test_prompt_only_row_in_a_labelled_split_is_skipped_with_its_own_reason(
    demo_assets: dict[str, Path],
) -> None:
    rows = read_rows(demo_assets["labelled_pool"])[:36]
    usable, bad = partition_for_written(rows, "off")
    assert len(usable) == 32 and len(bad) == 4
    assert {b.reason for b in bad} == {PROMPT_ONLY} and all(b.sample_id.startswith("pool-") for b in bad)
    with pytest.raises(DataError, match=PROMPT_ONLY):
        partition_for_written(rows, "off", strict=True)
    usable, bad = partition_for_written(rows, "prompt_only")
    assert len(usable) == 36 and not bad
    assert sum(is_prompt_only(r) for r in usable if isinstance(r, Row)) == 4
