"""``params.yaml``: the pipeline's knobs, its runs and caches, and how a knob becomes a config key.

The knob groups (``teacher``, ``student``, ``cache``, ``demo``) hold the sweepable values. ``runs``
lists every model the pipeline trains and evaluates, in the comparison's order; ``caches`` lists every
teacher cache. Each entry names its config and the knob groups it reads. ``distill resolve`` writes
each entry's config with its knobs applied as one standalone file, and the DVC stages run on those
files: a stage re-runs exactly when its own resolved config changes, so a student knob never re-runs
the cache stage and a GKD knob never re-runs an SFT student.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError

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
KNOB_GROUPS = ("teacher", "student", "cache")
# What dvc.yaml's foreach stages read of each entry besides its config (``${item.rows}``, ...): a
# missing one would only surface as a DVC interpolation error.
DVC_KEYS = {"runs": ("rows", "init", "targets"), "caches": ("rows",)}
# A name becomes ``<out>/<name>.yaml`` and a DVC stage name: one plain path component, never ``..``.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Entry:
    """One ``runs:`` or ``caches:`` entry: a config and the knob groups applied to it."""

    name: str
    config: Path
    params: tuple[str, ...]
    rows: str | None = None  # the rows DVC tracks for it: a dataset file or a folder above them
    section: str = "runs"


def load_params(params_file: str | Path) -> dict[str, Any]:
    from pipeline.config import load_yaml

    path = Path(params_file)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    params = load_yaml(path) or {}  # one-line errors for YAML that is broken or not UTF-8
    if not isinstance(params, dict):
        raise ConfigError(f"{path}: expected a mapping of knob groups, runs and caches")
    return params


def entries(params_file: str | Path, section: str) -> list[Entry]:
    """The ``runs`` or ``caches`` of ``params_file``, in file order, each entry checked."""
    params = load_params(params_file)
    raw = params.get(section)
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{params_file}: key '{section}': expected a mapping of name -> {{config, params}}")
    out = []
    for name, spec in raw.items():
        key = f"{params_file}: key '{section}.{name}"
        if not SAFE_NAME.fullmatch(str(name)):
            raise ConfigError(
                f"{key}': the name must be letters, digits, '_', '-' or '.', not starting with '.' (it "
                "names the resolved file and the DVC stage)"
            )
        if not isinstance(spec, dict) or not isinstance(spec.get("config"), str):
            raise ConfigError(f"{key}': expected a mapping with a 'config' path")
        groups = spec.get("params", [])
        if not isinstance(groups, list) or any(g not in KNOB_GROUPS for g in groups):
            raise ConfigError(f"{key}.params': expected a list of knob groups from {', '.join(KNOB_GROUPS)}")
        for k in DVC_KEYS.get(section, ()):
            if not isinstance(spec.get(k), str) or not spec[k].strip():
                raise ConfigError(
                    f"{key}.{k}': missing (or not a path); dvc.yaml's stages track it as a dependency of "
                    f"{name}"
                )
        out.append(Entry(str(name), Path(spec["config"]), tuple(groups), spec.get("rows"), section))
    return out


def run_names(params_file: str | Path) -> list[str]:
    """Every run the pipeline trains and evaluates, in the comparison's order."""
    return [e.name for e in entries(params_file, "runs")]


def overrides_from_params(
    params_file: str | Path, groups: tuple[str, ...] | list[str], has_rlhf: bool = True
) -> dict[str, Any]:
    """Config overrides for the knobs of ``groups`` (``rlhf.*`` ones only if the config has ``rlhf:``,
    so an SFT run reads the student's optimizer knobs and none of its distillation knobs)."""
    params = load_params(params_file)
    out: dict[str, Any] = {}
    for group in groups:
        knobs = params.get(group) or {}
        if not isinstance(knobs, dict):
            raise ConfigError(
                f"{params_file}: key '{group}': expected a mapping of knob -> value, got a "
                f"{type(knobs).__name__}"
            )
        for key, value in knobs.items():
            dotted = f"{group}.{key}"
            if dotted not in PARAM_TO_CONFIG:
                raise ConfigError(
                    f"{params_file}: key '{dotted}': not a known knob ({', '.join(sorted(PARAM_TO_CONFIG))})"
                )
            target = PARAM_TO_CONFIG[dotted]
            if target.startswith("rlhf.") and not has_rlhf:
                continue
            out[target] = value
    return out


def resolved_config(entry: Entry, params_file: str | Path) -> dict[str, Any]:
    """``entry``'s config, inheritance merged and its knobs applied: a standalone config mapping."""
    from pipeline.config import load_config, load_resolved

    where = f"{params_file}: '{entry.name}'"
    try:
        # The config alone is read first only to know whether it has an rlhf block (rlhf.* knobs
        # apply only then).
        has_rlhf = load_config(entry.config).rlhf is not None
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    overrides = overrides_from_params(params_file, entry.params, has_rlhf=has_rlhf)
    try:
        cfg, resolved = load_resolved(entry.config, overrides)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    _check_rows(entry, cfg.data.dataset, params_file)
    return resolved


def _check_rows(entry: Entry, dataset: list[str], params_file: str | Path) -> None:
    """``entry.rows`` must be each dataset file of its config or a folder above it: DVC re-runs the
    entry's stages when ``rows`` changes, so rows outside it would change and leave them as they were."""
    if entry.rows is None:
        return
    rows = os.path.abspath(entry.rows)
    for i, item in enumerate(dataset):
        if not item.endswith(".jsonl"):  # an ms-swift dataset spec, not a file DVC can track
            continue
        path = os.path.abspath(item)
        if path != rows and not path.startswith(rows.rstrip(os.sep) + os.sep):
            raise ConfigError(
                f"{params_file}: key '{entry.section}.{entry.name}.rows': {entry.rows!r} does not hold "
                f"data.dataset[{i}] {item!r} of {entry.config}; name that file or a folder above it (DVC "
                "re-runs the stage only when these rows change)"
            )


def every_entry(params_file: str | Path) -> list[Entry]:
    """Every cache and run of ``params_file``; their names must differ (each names one resolved file)."""
    every = entries(params_file, "caches") + entries(params_file, "runs")
    seen: set[str] = set()
    for entry in every:
        if entry.name in seen:
            raise ConfigError(
                f"{params_file}: '{entry.name}' names both a run and a cache; names must differ"
            )
        seen.add(entry.name)
    return every
