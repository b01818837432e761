"""Shared fixtures: one session-scoped set of tiny demo assets and one briefly trained teacher."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline import logs

# Offline and quiet: nothing in the suite may reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The library's log lines reach the console (and capsys) as they do under `distill`, for tests that
# call the library directly.
logs.configure()
logging.captureWarnings(False)  # warnings stay pytest's to record


_CONSOLE_ENV = (
    "DISTILL_VERBOSITY",
    "TQDM_DISABLE",
    "LOG_LEVEL",
    "TRANSFORMERS_VERBOSITY",
    "DATASETS_VERBOSITY",
)


@pytest.fixture(autouse=True)
def _console_settings_stay_in_their_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """``distill`` called in process writes its console settings to the environment (for the processes
    it starts, :mod:`pipeline.logs`); each test starts without them and leaves none behind."""
    for name in _CONSOLE_ENV:
        monkeypatch.setenv(name, "")  # recorded as it was, restored after the test
        monkeypatch.delenv(name)


@pytest.fixture
def forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows the cache stage's teacher forward ran on, per call (counts what a run recomputes)."""
    import pipeline.teacher.forward as fw

    calls: list[int] = []
    real = fw.teacher_topk

    def counting(model: Any, batch: dict[str, Any], *a: Any, **k: Any) -> Any:
        calls.append(int(batch["input_ids"].shape[0]))
        return real(model, batch, *a, **k)

    monkeypatch.setattr(fw, "teacher_topk", counting)
    return calls


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny teacher/student and a small demo dataset (built once per session)."""
    from pipeline.demo.assets import build_demo_assets

    root = tmp_path_factory.mktemp("demo_assets")
    return build_demo_assets(root, seed=0, n_train=48, n_val=16, n_test=16)


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def base_config(assets: dict[str, Path], out: Path, model: str = "student", **train: Any) -> dict[str, Any]:
    """A tiny full-tuning config over the session's demo assets (absolute paths)."""
    t = {
        "tuner_type": "full",
        "output_dir": str(out),
        "learning_rate": 2e-3,
        "num_train_epochs": 1,
        "max_steps": 4,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "freeze_vit": False,
        "freeze_aligner": False,
        "logging_steps": 1,
        "eval_steps": 4,
        "save_steps": 4,
        "save_total_limit": 1,
        "warmup_ratio": 0.0,
        "weight_decay": 0.0,
        "lr_scheduler_type": "constant",
        "gradient_checkpointing": False,
        "report_to": ["none"],
        "seed": 7,
    }
    t.update(train)
    return {
        "model": {
            "model": str(assets[model]),
            "model_type": "qwen2_5_vl",
            "template": "qwen2_5_vl",
            "torch_dtype": "float32",
        },
        "data": {"dataset": [str(assets["train"])], "val_dataset": [str(assets["val"])], "max_length": 512},
        "train": t,
        "custom": {"trainer_variant": "sft"},
    }


@pytest.fixture(scope="session")
def tiny_teacher(demo_assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo teacher after a brief SFT (a few steps): a teacher with non-uniform distributions."""
    from pipeline.config import load_config
    from pipeline.train.launcher import run_training

    out = tmp_path_factory.mktemp("teacher_run")
    cfg_path = write_config(
        out / "teacher.yaml", base_config(demo_assets, out / "run", model="teacher", max_steps=6)
    )
    run_training(load_config(cfg_path))
    return out / "run" / "final"


def gkd_config(
    assets: dict[str, Path],
    teacher: Path,
    cache: Path,
    out: Path,
    *,
    variant: str = "gkd_cached",
    rlhf: dict[str, Any] | None = None,
    custom: dict[str, Any] | None = None,
    **train: Any,
) -> dict[str, Any]:
    """A tiny GKD config (student from the demo assets, the session's teacher, a cache dir)."""
    cfg = base_config(assets, out, model="student", **train)
    cfg["rlhf"] = {
        "rlhf_type": "gkd",
        "teacher_model": str(teacher),
        "teacher_model_type": "qwen2_5_vl",
        "beta": 0.5,
        "sft_alpha": 0.5,
        "lmbda": 0.0,
        "max_completion_length": 8,
        **(rlhf or {}),
    }
    cfg["custom"] = {
        "trainer_variant": variant,
        "teacher_cache": str(cache) if cache else None,
        "top_k": 16,
        "cache_batch_size": 8,
        **(custom or {}),
    }
    return cfg


def _cached_config(root: Path, assets: dict[str, Path], teacher: Path, custom: dict[str, Any] | None) -> Path:
    """Write a GKD config under ``root``, run the cache stage for it, return the config path."""
    from pipeline.config import load_config
    from pipeline.teacher.stage import run_caching

    cfg = gkd_config(assets, teacher, root / "cache", root / "run", custom=custom)
    path = write_config(root / "cfg.yaml", cfg)
    run_caching(load_config(path), progress=False)
    return path


@pytest.fixture(scope="session")
def exact_cache(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Config path of a cache with k = the full real vocabulary and lossless fp32 logprobs."""
    custom = {"top_k": 10_000, "logprob_encoding": "fp32"}
    return _cached_config(tmp_path_factory.mktemp("exact_cache"), demo_assets, tiny_teacher, custom)


@pytest.fixture(scope="session")
def default_cache(
    demo_assets: dict[str, Path], tiny_teacher: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Config path of a cache with the default encoding at k=16."""
    return _cached_config(tmp_path_factory.mktemp("default_cache"), demo_assets, tiny_teacher, None)
