"""What a long training run meets, end to end on the tiny models: a row edited after caching, a skipped
row fixed since, SIGTERM, a checkpoint cut short by a kill, and a full disk mid-checkpoint. Each is
refused or survived before (or at) the step it would cost, in one line, and the resume completes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import gkd_config, write_config

pytestmark = pytest.mark.slow  # trains and caches with the real tiny models

SKIPPED = "train-00007"  # its response is empty when the cache is built: recorded as skipped


def _copy_data(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_row(path: Path, index: int, response: str) -> None:
    lines = path.read_text().splitlines()
    row = json.loads(lines[index])
    row["messages"][-1]["content"] = response
    lines[index] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def cached(demo_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A cache of the demo data (the demo's teacher) with ``SKIPPED`` recorded as skipped; the config."""
    from pipeline.config import load_config
    from pipeline.teacher.stage import run_caching

    root = tmp_path_factory.mktemp("train_faults")
    data = _copy_data(demo_assets["data"], root / "data")
    original = (data / "train.jsonl").read_text()
    _edit_row(data / "train.jsonl", 7, "")
    assets = {**demo_assets, "train": data / "train.jsonl", "val": data / "val.jsonl"}
    cfg = gkd_config(
        assets,
        demo_assets["teacher"],
        root / "cache",
        root / "run",
        max_steps=4,
        save_steps=100,
        eval_steps=100,
        save_total_limit=None,
    )
    path = write_config(root / "cfg.yaml", cfg)
    run_caching(load_config(path), progress=False)
    return {"config": path, "data": data, "original_train": original}


def _load(cached: dict[str, Any], out: Path, **overrides: Any) -> Any:
    from pipeline.config import load_config

    return load_config(cached["config"], overrides={"train.output_dir": str(out), **overrides})


def _losses(run: Path) -> dict[int, float]:
    out = {}
    for line in (run / "logging.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "train/loss" in r:
            out[int(r["global_step/max_steps"].split("/")[0])] = r["train/loss"]
    return out


def _error_line(stderr: str) -> str:
    """The one error line a command printed last (progress bars and library logs come before it)."""
    lines = stderr.strip().splitlines()
    errors = [x for x in lines if x.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    return errors[0]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(ckpt / "model.safetensors"))


# ---- stale rows: refused before step 1 -----------------------------------------------------------------


def test_last_row_edited_after_caching_is_refused_before_step_1(
    cached: dict[str, Any], tmp_path: Path
) -> None:
    """Only 2 steps (8 of 47 rows) would run: before, the edited last row was never fetched and the
    run finished (rc 0); now every row is compared with its cache row before the first step."""
    from pipeline.errors import CacheMismatchError
    from pipeline.train.launcher import run_training

    data = _copy_data(cached["data"], tmp_path / "data")
    n = len((data / "train.jsonl").read_text().splitlines())
    _edit_row(data / "train.jsonl", n - 1, "an edited caption of the last row.")
    out = tmp_path / "run"
    cfg = _load(cached, out, **{"data.dataset": [str(data / "train.jsonl")], "train.max_steps": 2})
    with pytest.raises(CacheMismatchError) as err:
        run_training(cfg)
    msg = str(err.value)
    assert f"train.jsonl:{n}: sample 'train-{n - 1:05d}': encoding differs" in msg
    assert "first difference" in msg and "distill cache" in msg and "\n" not in msg
    assert not list(out.glob("checkpoint-*")) and not (out / "logging.jsonl").exists()


def test_skipped_row_fixed_since_caching_is_refused_as_stale(cached: dict[str, Any], tmp_path: Path) -> None:
    """The skipped row's response is restored: training says the skip record is stale and that
    ``distill cache`` re-attempts the row, instead of leaving it out under its old reason."""
    from pipeline.errors import CacheMismatchError
    from pipeline.train.launcher import run_training

    data = _copy_data(cached["data"], tmp_path / "data")
    (data / "train.jsonl").write_text(cached["original_train"])
    out = tmp_path / "run"
    with pytest.raises(CacheMismatchError) as err:
        run_training(_load(cached, out, **{"data.dataset": [str(data / "train.jsonl")]}))
    msg = str(err.value)
    assert f"train.jsonl:8: sample '{SKIPPED}': the skip record" in msg and "empty_response" in msg
    assert "re-attempt" in msg and "distill cache" in msg and "\n" not in msg
    assert not (out / "logging.jsonl").exists()


# ---- SIGTERM: checkpoint, one line, resume to the same result -------------------------------------------


def _sigterm_during_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Send this process SIGTERM while optimizer step ``step`` (1-based) runs, as a cluster would."""
    from pipeline.train.trainer import _DistillTrainerBase

    original = _DistillTrainerBase.training_step

    def training_step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.state.global_step == step - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(_DistillTrainerBase, "training_step", training_step)


def test_sigterm_saves_a_checkpoint_and_the_resume_equals_an_uninterrupted_run(
    cached: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pipeline.errors import exit_code
    from pipeline.train.checkpoints import checkpoint_problem
    from pipeline.train.launcher import run_training

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_training(_load(cached, whole))

    with monkeypatch.context() as m:
        _sigterm_during_step(m, 2)
        capsys.readouterr()
        assert exit_code(lambda: run_training(_load(cached, cut))) == 2
    err = _error_line(capsys.readouterr().err)
    assert err.startswith("error: TrainingStopped: "), err
    assert "stopped by SIGTERM at step 2 of 4" in err
    assert f"train.extra.resume_from_checkpoint: {cut / 'checkpoint-2'}" in err
    assert checkpoint_problem(cut / "checkpoint-2") is None
    assert not (cut / "final").exists()  # the stage did not finish

    run_training(_load(cached, cut, **{"train.extra": {"resume_from_checkpoint": "last"}}))
    a, b = _losses(whole), _losses(cut)
    assert set(a) == set(b) == {1, 2, 3, 4}
    np.testing.assert_allclose([b[s] for s in (1, 2, 3, 4)], [a[s] for s in (1, 2, 3, 4)], rtol=1e-5)
    wa, wb = _weights(whole / "final"), _weights(cut / "final")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)


def test_sigterm_checkpoint_survives_save_total_limit_1_with_an_earlier_best(
    cached: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``save_total_limit: 1`` the Trainer's finalisation deletes every checkpoint but the best:
    the one SIGTERM saved (step 3) must survive beside the best (step 2), and the resume completes."""
    from pipeline.train.checkpoints import checkpoint_problem
    from pipeline.train.launcher import run_training
    from pipeline.train.preemption import TrainingStopped

    out = tmp_path / "run"
    knobs = {"train.save_steps": 2, "train.eval_steps": 2, "train.save_total_limit": 1}
    with monkeypatch.context() as m:
        _sigterm_during_step(m, 3)
        with pytest.raises(TrainingStopped, match="at step 3 of 4"):
            run_training(_load(cached, out, **knobs))
    assert checkpoint_problem(out / "checkpoint-3") is None
    run_training(_load(cached, out, **knobs, **{"train.extra": {"resume_from_checkpoint": "last"}}))
    assert 4 in _losses(out) and (out / "final" / "model.safetensors").is_file()


# ---- a checkpoint cut short: named, or skipped by `last` ------------------------------------------------


@pytest.fixture(scope="module")
def two_checkpoints(cached: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.train.launcher import run_training

    out = tmp_path_factory.mktemp("two_checkpoints") / "run"
    run_training(_load(cached, out, **{"train.save_steps": 2}))
    return out


def _delete(path: Path) -> None:
    path.unlink()


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


DAMAGE = {
    "no_trainer_state": ("trainer_state.json", _delete, "no trainer_state.json"),
    "torn_trainer_state": ("trainer_state.json", _truncate, "trainer_state.json is torn"),
    "truncated_weights": ("model.safetensors", _truncate, "model.safetensors is truncated"),
    "no_weights": ("model.safetensors", _delete, "no model weights"),
    "no_optimizer": ("optimizer.pt", _delete, "no optimizer.pt"),
    "truncated_optimizer": ("optimizer.pt", _truncate, "optimizer.pt is truncated"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_from_a_partial_checkpoint_names_the_last_whole_one(
    cached: dict[str, Any], two_checkpoints: Path, tmp_path: Path, damage: str
) -> None:
    from pipeline.errors import ConfigError
    from pipeline.train.launcher import run_training

    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out, symlinks=True)
    name, harm, phrase = DAMAGE[damage]
    harm(out / "checkpoint-4" / name)
    resume = {"train.extra": {"resume_from_checkpoint": str(out / "checkpoint-4")}}
    with pytest.raises(ConfigError) as err:
        run_training(_load(cached, out, **resume))
    msg = str(err.value)
    assert f"{out / 'checkpoint-4'} is a partial checkpoint ({phrase}" in msg, msg
    assert f"the last whole checkpoint is {out / 'checkpoint-2'}" in msg and "\n" not in msg


def test_resume_last_skips_a_partial_checkpoint(
    cached: dict[str, Any], two_checkpoints: Path, tmp_path: Path
) -> None:
    from pipeline.train.launcher import run_training

    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out, symlinks=True)
    (out / "checkpoint-4" / "trainer_state.json").unlink()
    shutil.rmtree(out / "final")
    (out / "logging.jsonl").unlink()
    run_training(_load(cached, out, **{"train.extra": {"resume_from_checkpoint": True}}))
    a, b = _losses(two_checkpoints), _losses(out)
    assert set(b) == {3, 4}  # resumed after checkpoint-2
    np.testing.assert_allclose([b[3], b[4]], [a[3], a[4]], rtol=1e-5)
    assert (out / "final" / "model.safetensors").is_file()


# ---- a full disk mid-checkpoint ---------------------------------------------------------------------


def test_full_disk_in_a_checkpoint_is_one_line_and_the_resume_completes(
    cached: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import transformers.modeling_utils as modeling_utils

    from pipeline.errors import exit_code
    from pipeline.train.launcher import run_training

    out = tmp_path / "run"
    real_save = modeling_utils.safe_save_file

    def full_disk(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        if "checkpoint-4" in str(filename):
            Path(filename).write_bytes(b"\0" * 64)  # a partial file, as a full disk leaves it
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(tensors, filename, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(modeling_utils, "safe_save_file", full_disk)
        capsys.readouterr()
        assert exit_code(lambda: run_training(_load(cached, out, **{"train.save_steps": 2}))) == 2
    err = _error_line(capsys.readouterr().err)
    assert err.startswith(f"error: DiskFullError: {out}: no space left on device"), err
    assert f"the last whole checkpoint is {out / 'checkpoint-2'}" in err
    assert "resume_from_checkpoint: last" in err
    assert not (out / "checkpoint-4").exists() and not (out / "final").exists()

    run_training(
        _load(cached, out, **{"train.save_steps": 2, "train.extra": {"resume_from_checkpoint": "last"}})
    )
    assert (out / "final" / "model.safetensors").is_file()
    assert (out / "checkpoint-4" / "trainer_state.json").is_file()
