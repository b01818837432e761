"""Whose Python may run: a model directory's own code is refused unless the config trusts it.

ms-swift's loader (``swift.model.get_model_processor`` / ``get_processor``) passes
``trust_remote_code=True`` to transformers unconditionally, so a directory that ships
``configuration_*.py`` / ``modeling_*.py`` and names them in an ``auto_map`` would have that code
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

# The JSON files transformers reads an ``auto_map`` from (config, tokenizer, image/video processor).
_AUTO_MAP_FILES = (
    "config.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "adapter_config.json",
)


def remote_code_reason(directory: str | Path) -> str | None:
    """What in ``directory`` would make transformers import code shipped with it (``"config.json:
    auto_map"``, ``"modeling_x.py"``), or None when nothing would. A hub id (no such directory) is
    None: its files are not here to look at."""
    root = Path(directory)
    if not root.is_dir():
        return None
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


def require_trusted(directory: str | Path, allowed: bool, key: str) -> None:
    """Refuse ``directory`` in one line when it ships code and ``key`` is not set to true.

    Called before every model, tokenizer or processor load of this project (teacher: ``TEACHER_KEY``;
    student, student init and checkpoints: ``STUDENT_KEY``)."""
    if allowed:
        return
    reason = remote_code_reason(directory)
    if reason is not None:
        raise ConfigError(
            f"{directory}: the model directory ships its own Python ({reason}), which loading it would "
            f"execute; set {key}: true if you trust that code"
        )
