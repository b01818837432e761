"""The training dataset keeps the encodings it made, within its byte budget, and serves them unchanged."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import base_config, write_config


def _dataset(demo_assets: dict[str, Path], tmp_path: Path, memo_bytes: int, budget=None):  # type: ignore[no-untyped-def]
    from pipeline.config import load_config
    from pipeline.data import read_split_rows
    from pipeline.encoding import RowEncoder
    from pipeline.train.data import EncodedDataset

    cfg = load_config(write_config(tmp_path / "c.yaml", base_config(demo_assets, tmp_path / "out")))
    rows = read_split_rows([Path(demo_assets["train"])])[:6]
    from pipeline.train.data import MemoBudget

    return EncodedDataset(rows, RowEncoder.from_config(cfg), memo_budget=budget or MemoBudget(memo_bytes))


def _same(a: dict, b: dict) -> None:  # type: ignore[type-arg]
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


def test_kept_encodings_equal_fresh_ones_and_the_encoder_runs_once_per_row(
    demo_assets: dict[str, Path], tmp_path: Path
) -> None:
    from pipeline.train.data import encoding_bytes

    fresh = _dataset(demo_assets, tmp_path, memo_bytes=0)
    kept = _dataset(demo_assets, tmp_path, memo_bytes=2**30)
    for _epoch in range(3):
        for i in range(len(kept)):
            _same(kept[i], fresh[i])
    assert kept.encodes == len(kept)  # one encoding per row over three epochs
    assert fresh.encodes == 3 * len(fresh)  # budget 0: every access encodes
    assert kept.memo_budget.used == sum(encoding_bytes(enc) for _, enc in kept.memo.values()) > 0


def test_a_full_budget_keeps_what_it_holds_and_encodes_the_rest(
    demo_assets: dict[str, Path], tmp_path: Path
) -> None:
    from pipeline.train.data import encoding_bytes

    probe = _dataset(demo_assets, tmp_path, memo_bytes=2**30)
    for i in range(len(probe)):
        probe[i]
    sizes = [encoding_bytes(probe.memo[i][1]) for i in range(len(probe))]
    budget = sizes[0] + sizes[1]  # room for the first two rows only
    ds = _dataset(demo_assets, tmp_path, memo_bytes=budget)
    for _epoch in range(2):
        for i in range(len(ds)):
            ds[i]
    assert sorted(ds.memo) == [0, 1] and ds.memo_budget.used <= budget
    assert ds.encodes == 2 + 2 * (len(ds) - 2)


def test_the_train_and_val_datasets_of_a_process_share_one_budget(
    demo_assets: dict[str, Path], tmp_path: Path
) -> None:
    from pipeline.train.data import MemoBudget, encoding_bytes

    probe = _dataset(demo_assets, tmp_path, memo_bytes=2**30)
    probe[0]
    one = encoding_bytes(probe.memo[0][1])
    shared = MemoBudget(3 * one)  # room for about three rows in all, not three per dataset
    train, val = (_dataset(demo_assets, tmp_path, 0, budget=shared) for _ in range(2))
    for ds in (train, val):
        for i in range(len(ds)):
            ds[i]
    kept = [enc for ds in (train, val) for _, enc in ds.memo.values()]
    assert shared.used == sum(encoding_bytes(enc) for enc in kept) <= shared.limit
    assert len(kept) < len(train) and len(val.memo) < len(train.memo)  # train drew on it first
