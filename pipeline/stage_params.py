"""How DVC stages turn ``params.yaml`` knobs into config overrides, and leave a trace of each run.

``params.yaml`` holds the sweepable knobs in two groups: ``cache`` (read by the cache stage and,
because the trainer must match the cache's fingerprint, by the student stages) and ``student`` (read
only by the student stages). Each knob maps to one config key; a stage reads one resolved config
(its YAML chain plus these overrides) and writes it next to its outputs.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.config import DistillConfig

PARAM_TO_CONFIG = {
    "cache.top_k": "custom.top_k",
    "cache.loss_temperature": "custom.loss_temperature",
    "cache.logprob_encoding": "custom.logprob_encoding",
    "teacher.learning_rate": "train.learning_rate",
    "teacher.max_steps": "train.max_steps",
    "student.model": "model.model",
    "student.learning_rate": "train.learning_rate",
    "student.max_steps": "train.max_steps",
    "student.seed": "train.seed",
    "student.beta": "rlhf.beta",
    "student.sft_alpha": "rlhf.sft_alpha",
    "student.lmbda": "rlhf.lmbda",
}


def overrides_from_params(
    params_file: str | Path, groups: list[str], has_rlhf: bool = True
) -> dict[str, Any]:
    """Config overrides for the knobs of ``groups`` in ``params_file`` (rlhf.* only if the config has rlhf)."""
    path = Path(params_file)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    params = yaml.safe_load(path.read_text()) or {}
    out: dict[str, Any] = {}
    for group in groups:
        for key, value in (params.get(group) or {}).items():
            dotted = f"{group}.{key}"
            if dotted not in PARAM_TO_CONFIG:
                raise ConfigError(
                    f"{path}: key '{dotted}': not a known knob ({', '.join(sorted(PARAM_TO_CONFIG))})"
                )
            target = PARAM_TO_CONFIG[dotted]
            if target.startswith("rlhf.") and not has_rlhf:
                continue
            out[target] = value
    return out


def load_stage_config(
    config: str | Path, params_file: str | Path, groups: list[str]
) -> tuple[DistillConfig, dict[str, Any]]:
    """The one resolved config a stage runs with, and the standalone mapping that loads to it (what
    ``write_resolved`` records beside the stage's outputs). The config alone is read first only to
    know whether it has an rlhf block (``rlhf.*`` knobs apply only then)."""
    from pipeline.config import load_config, load_resolved

    has_rlhf = load_config(config).rlhf is not None
    return load_resolved(config, overrides_from_params(params_file, groups, has_rlhf=has_rlhf))


def write_resolved(resolved: dict[str, Any], out: str | Path) -> None:
    """Write ``load_stage_config``'s mapping to ``out`` as YAML."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(yaml.safe_dump(resolved, sort_keys=True))


def leave_marker(stage: str, **info: Any) -> None:
    """Append a line to ``$DISTILL_STAGE_MARKERS`` (if set): lets tests count how often a stage ran."""
    target = os.environ.get("DISTILL_STAGE_MARKERS")
    if not target:
        return
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"stage": stage, "time": time.time(), **info}) + "\n")
