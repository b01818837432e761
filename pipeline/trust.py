"""Whose Python may run: a model directory's own code is refused unless the config trusts it.

ms-swift 4.6's loader (``swift.model.get_model_processor`` / ``get_processor``, and its argument
classes, which read the model's config) passes ``trust_remote_code=True`` to transformers
unconditionally, and some of its model types import a directory's ``*.py`` files by name without any
``auto_map``. So a directory that ships ``configuration_*.py`` / ``modeling_*.py`` would have that code
executed by every stage that loads it. Qwen2.5-VL and Qwen3-VL need no such code. We cannot change
ms-swift's argument (never patch it), so every load first goes through :func:`require_trusted`, which
looks at the directory before anything imports from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import ConfigError

__all__ = ["STUDENT_KEY", "TEACHER_KEY", "remote_code_reason", "require_trusted"]

STUDENT_KEY = "model.trust_remote_code"
TEACHER_KEY = "custom.teacher_trust_remote_code"

# The JSON files transformers reads an ``auto_map`` from (config, tokenizer, image/video processor),
# and a LoRA adapter's config (its base model's classes).
_AUTO_MAP_FILES = (
    "config.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "adapter_config.json",
)


def remote_code_reason(directory: str | Path) -> str | None:
    """What in ``directory`` would make a loader import code shipped with it (``"config.json:
    auto_map"``, ``"modeling_x.py"``), or None when nothing would. Any top-level ``*.py`` counts:
    ms-swift imports some by module name, with no ``auto_map`` naming them."""
    root = Path(directory)
    for name in _AUTO_MAP_FILES:
        path = root / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # unreadable JSON is the loader's error to report, not code to run
        if isinstance(data, dict) and data.get("auto_map"):
            return f"{name}: auto_map"
    shipped = sorted(p.name for p in root.glob("*.py"))
    return shipped[0] if shipped else None


def _hub_snapshot(hub_id: str) -> Path:
    """The local copy of a hub model's non-weight files, fetched the way ms-swift's loader fetches
    them first (same function, same hub choice, ``USE_HF``), so the load that follows reuses it."""
    from swift.utils import safe_snapshot_download

    try:
        return Path(safe_snapshot_download(hub_id, download_model=False))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(
            f"{hub_id}: cannot fetch the hub model's files to check them for shipped code "
            f"({type(exc).__name__}: {exc}); download it and give its directory"
        ) from exc


def require_trusted(location: str | Path, allowed: bool, key: str) -> None:
    """Refuse ``location`` in one line when it ships code and ``key`` does not allow it.

    ``location`` is what ``config.model_location`` returned: a local directory, or a hub id whose
    files are fetched (weights excluded) to be looked at first. ``key`` is the config key that allows
    it (``STUDENT_KEY`` for the student, its checkpoints and tokenizer; ``TEACHER_KEY``), or a
    command-line flag (``--trust-remote-code``). Called before every model, tokenizer or processor
    load of this project."""
    if allowed:
        return
    directory = Path(location)
    if not directory.is_dir():
        directory = _hub_snapshot(str(location))
    reason = remote_code_reason(directory)
    if reason is None:
        return
    remedy = f"pass {key}" if key.startswith("--") else f"set {key}: true"
    raise ConfigError(
        f"{location}: the model directory ships its own Python ({reason}), which loading it would "
        f"execute; {remedy} if you trust that code"
    )
