"""Whole and partial training checkpoints, told apart by structure, and the resume that uses only
whole ones (no model: checkpoints are written here as the Trainer lays them out)."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from pipeline.errors import ConfigError, DiskFullError
from pipeline.train.checkpoints import (
    checkpoint_problem,
    disk_full_error,
    is_disk_full_anywhere,
    last_complete,
    resolve_resume,
)


def _checkpoint(root: Path, step: int, *, sharded: bool = False) -> Path:
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    tensors = {"w": torch.arange(64, dtype=torch.float32).reshape(8, 8), "b": torch.ones(8)}
    if sharded:
        save_file({"w": tensors["w"]}, str(ckpt / "model-00001-of-00002.safetensors"))
        save_file({"b": tensors["b"]}, str(ckpt / "model-00002-of-00002.safetensors"))
        index = {
            "weight_map": {"w": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
        }
        (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    else:
        save_file(tensors, str(ckpt / "model.safetensors"))
    torch.save({"state": {0: {"exp_avg": torch.zeros(64)}}}, ckpt / "optimizer.pt")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return ckpt


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 10)


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_whole_and_partial_checkpoints_are_told_apart(tmp_path: Path, sharded: bool) -> None:
    ckpt = _checkpoint(tmp_path, 4, sharded=sharded)
    assert checkpoint_problem(ckpt) is None
    weights = ckpt / ("model-00002-of-00002.safetensors" if sharded else "model.safetensors")
    _truncate(weights)
    assert checkpoint_problem(ckpt) == f"{weights.name} is truncated"
    weights.unlink()
    expected = f"{weights.name} is missing" if sharded else "no model weights"
    assert checkpoint_problem(ckpt) == expected


@pytest.mark.parametrize(
    ("name", "harm", "problem"),
    [
        ("trainer_state.json", "delete", "no trainer_state.json"),
        ("trainer_state.json", "truncate", "trainer_state.json is torn"),
        ("optimizer.pt", "delete", "no optimizer.pt"),
        ("optimizer.pt", "truncate", "optimizer.pt is truncated or unreadable"),
    ],
)
def test_each_missing_or_torn_file_is_named(tmp_path: Path, name: str, harm: str, problem: str) -> None:
    ckpt = _checkpoint(tmp_path, 2)
    (ckpt / name).unlink() if harm == "delete" else _truncate(ckpt / name)
    assert checkpoint_problem(ckpt) == problem


def test_a_deepspeed_checkpoint_keeps_its_optimizer_elsewhere(tmp_path: Path) -> None:
    ckpt = _checkpoint(tmp_path, 2)
    (ckpt / "optimizer.pt").unlink()
    (ckpt / "global_step2").mkdir()
    assert checkpoint_problem(ckpt) is None


class _Cfg:
    """What ``resolve_resume`` reads of a config."""

    def __init__(self, out: Path, value: Any):
        self.config_path = "cfg.yaml"
        self.train = type("T", (), {"output_dir": str(out), "extra": {"resume_from_checkpoint": value}})()


def test_resume_names_or_picks_the_last_whole_checkpoint(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 10)
    newest = _checkpoint(tmp_path, 12)
    (newest / "trainer_state.json").unlink()  # killed while writing checkpoint-12
    assert last_complete(tmp_path) == tmp_path / "checkpoint-10"  # by step, not by name
    for value in ("last", True, "true"):
        assert resolve_resume(_Cfg(tmp_path, value)) == str(tmp_path / "checkpoint-10")
    assert resolve_resume(_Cfg(tmp_path, str(tmp_path / "checkpoint-2"))) == str(tmp_path / "checkpoint-2")
    with pytest.raises(ConfigError) as err:
        resolve_resume(_Cfg(tmp_path, str(newest)))
    assert str(err.value) == (
        f"cfg.yaml: train.extra.resume_from_checkpoint: {newest} is a partial checkpoint (no "
        "trainer_state.json: it was killed or ran out of disk while being written); the last whole "
        f"checkpoint is {tmp_path / 'checkpoint-10'}: resume from it (or set the key to 'last')"
    )
    with pytest.raises(ConfigError, match="is not a directory"):
        resolve_resume(_Cfg(tmp_path, str(tmp_path / "checkpoint-99")))
    assert resolve_resume(_Cfg(tmp_path, None)) is None
    assert resolve_resume(_Cfg(tmp_path / "fresh", "last")) is None  # a first run: from step 0


def test_full_disk_mid_checkpoint_removes_it_and_names_the_last_whole_one(tmp_path: Path) -> None:
    _checkpoint(tmp_path, 2)
    partial = tmp_path / "checkpoint-4"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\0" * 16)
    exc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    err = disk_full_error(str(tmp_path), partial, exc)
    assert isinstance(err, DiskFullError) and not partial.exists()
    msg = str(err)
    assert msg.startswith(f"{tmp_path}: no space left on device while writing checkpoint-4")
    assert f"the last whole checkpoint is {tmp_path / 'checkpoint-2'}" in msg and "\n" not in msg


def test_a_full_disk_is_seen_through_torch_and_safetensors_error_types() -> None:
    assert is_disk_full_anywhere(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
    assert is_disk_full_anywhere(
        RuntimeError(f"Error while serializing: IoError({os.strerror(errno.ENOSPC)})")
    )
    try:
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        except OSError as inner:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0") from inner
    except RuntimeError as outer:
        assert is_disk_full_anywhere(outer)
    assert not is_disk_full_anywhere(RuntimeError("CUDA out of memory"))
