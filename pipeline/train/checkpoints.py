"""Which training checkpoints are whole, and the resume that uses only whole ones.

transformers' Trainer writes a checkpoint straight into ``<output_dir>/checkpoint-N`` (weights, then
optimizer, scheduler and RNG states, ``trainer_state.json`` last) and only then rotates older ones
out, so a kill or a full disk mid-write leaves the newest directory partial while the one before it
is still whole. Resuming from the partial one fails deep inside the Trainer (``FileNotFoundError`` for
``trainer_state.json``, ``ValueError`` for torn weights); :func:`resolve_resume` checks the
checkpoint first (:func:`checkpoint_problem`, by structure: files present, JSON parses, safetensors
and torch archives not truncated, nothing is loaded) and names the last whole one, or picks it for
``train.extra.resume_from_checkpoint: last`` (or ``true``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError, DiskFullError, first_line, is_disk_full

if TYPE_CHECKING:
    from pipeline.config import DistillConfig

logger = logging.getLogger(__name__)

RESUME_KEY = "resume_from_checkpoint"  # a train.extra key (ms-swift's SftArguments field)
LAST = "last"  # resume_from_checkpoint value: the last whole checkpoint of output_dir (true says the same)
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Weight files a Trainer checkpoint holds one of (full model, sharded, adapter, pickled).
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    "pytorch_model.bin",
    "adapter_model.bin",
)


def checkpoints(output_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` directories of ``output_dir``, by step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _CHECKPOINT.match(p.name)]
    return sorted(found, key=lambda p: int(_CHECKPOINT.match(p.name).group(1)))  # type: ignore[union-attr]


def checkpoint_problem(path: str | Path) -> str | None:
    """What makes checkpoint directory ``path`` unusable for a resume (a short phrase), or None.

    A DeepSpeed checkpoint (``global_step*``) keeps the optimizer in its own files; any other needs
    ``optimizer.pt`` (a resume without it would restart the optimizer, not continue the run).
    """
    ckpt = Path(path)
    if not ckpt.is_dir():
        return "not a directory"
    try:
        json.loads((ckpt / STATE_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {STATE_NAME}"
    except (OSError, ValueError):
        return f"{STATE_NAME} is torn"
    weights = [ckpt / n for n in _WEIGHTS if (ckpt / n).is_file()]
    if not weights:
        return "no model weights"
    for w in weights:
        if (problem := _file_problem(w)) is not None:
            return problem
    deepspeed = any(p.is_dir() and p.name.startswith("global_step") for p in ckpt.iterdir())
    if not deepspeed:
        if not (ckpt / OPTIMIZER_NAME).is_file():
            return f"no {OPTIMIZER_NAME}"
        if (problem := _file_problem(ckpt / OPTIMIZER_NAME)) is not None:
            return problem
    return None


def _file_problem(path: Path) -> str | None:
    """A weights / optimizer file cut short: safetensors header and data end, zip central directory,
    a sharded index's shards present and whole."""
    name = path.name
    try:
        if name.endswith(".safetensors"):
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if path.stat().st_size < 8 + n + end:
                return f"{name} is truncated"
        elif name.endswith(".index.json"):
            shards = set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values())
            for shard in sorted(shards):
                if not (path.parent / shard).is_file():
                    return f"{shard} is missing"
                if (problem := _file_problem(path.parent / shard)) is not None:
                    return problem
        elif name.endswith((".pt", ".bin")):
            with zipfile.ZipFile(path) as z:  # torch.save's archive: its directory is at the very end
                z.namelist()
    except (OSError, ValueError, KeyError, TypeError, struct.error, zipfile.BadZipFile):
        return f"{name} is truncated or unreadable"
    return None


def last_complete(output_dir: str | Path) -> Path | None:
    """The newest whole checkpoint of ``output_dir``, or None."""
    for ckpt in reversed(checkpoints(output_dir)):
        if checkpoint_problem(ckpt) is None:
            return ckpt
    return None


def resolve_resume(cfg: DistillConfig) -> str | None:
    """The checkpoint ``train.extra.resume_from_checkpoint`` resumes from, checked whole; None: none.

    ``last`` / ``true``: the newest whole checkpoint of ``train.output_dir`` (None when it has none,
    so a job that always passes ``last`` starts fresh the first time). A path: it must be whole, else
    ``ConfigError`` naming what is missing and the last whole checkpoint.
    """
    value = cfg.train.extra.get(RESUME_KEY)
    out = cfg.train.output_dir
    key = f"{cfg.config_path or 'config'}: train.extra.{RESUME_KEY}"
    if value is None or value is False:
        return None
    if value is True or (isinstance(value, str) and value.lower() in (LAST, "true")):
        found = last_complete(out)
        every = checkpoints(out)
        partial = [p.name for p in every[every.index(found) + 1 :]] if found is not None else []
        if found is None:
            logger.warning("%s: %s: no whole checkpoint in %s, training from step 0", key, value, out)
            return None
        if partial:
            logger.warning("%s: skipping partial checkpoints %s", key, ", ".join(partial))
        return str(found)
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a checkpoint directory, '{LAST}' or true, got {value!r}")
    if not os.path.isdir(value):
        raise ConfigError(f"{key}: {value!r} is not a directory{_last_hint(out)}")
    problem = checkpoint_problem(value)
    if problem is not None:
        raise ConfigError(
            f"{key}: {value} is a partial checkpoint ({problem}: it was killed or ran out of disk while "
            f"being written){_last_hint(Path(value).parent)}"
        )
    return value


def _last_hint(output_dir: str | Path) -> str:
    found = last_complete(output_dir)
    if found is None:
        return f"; {output_dir} holds no whole checkpoint: leave the key out to train from step 0"
    return f"; the last whole checkpoint is {found}: resume from it (or set the key to '{LAST}')"


def is_disk_full_anywhere(exc: BaseException) -> bool:
    """A full disk in ``exc`` or what caused it (a library wraps the writer's error in its own)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if is_disk_full(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full_error(output_dir: str, partial: Path, exc: BaseException) -> DiskFullError:
    """The one line for a checkpoint write that met a full disk; ``partial`` (the directory being
    written) is removed first: it cannot be resumed from and holds the space a rerun needs."""
    shutil.rmtree(partial, ignore_errors=True)
    found = last_complete(output_dir)
    kept = f"the last whole checkpoint is {found}" if found else "no whole checkpoint was written yet"
    return DiskFullError(
        f"{output_dir}: no space left on device while writing {partial.name} ({first_line(exc)}); the partial "
        f"{partial.name} was removed, {kept}; free space and run the same command with "
        f"train.extra.{RESUME_KEY}: {LAST} to continue from it"
    )


def stopped_line(output_dir: str, signal_name: str, step: int, max_steps: int, ckpt: Any) -> str:
    """The one line of a run stopped by a signal: where its checkpoint is and how to resume."""
    return (
        f"{output_dir}: stopped by {signal_name} at step {step} of {max_steps}; checkpoint saved at {ckpt}; "
        f"resume with train.extra.{RESUME_KEY}: {ckpt} (or: {LAST})"
    )
