"""Load YAML configs into typed ``DistillConfig`` objects.

A config file may start with ``inherit: <parent.yaml>``, a path relative to the file's own
directory. The chain is merged root first: mappings merge key by key, anything else (lists,
scalars, ``null``) replaces the parent's value, so ``rlhf: null`` drops an inherited block.
Dotted overrides (``{"rlhf.beta": 0.1}``, from ``--set`` or a DVC params sweep) apply last and
are checked like file keys. Raw dicts stop here: every error names the file (or ``overrides``)
that set the offending dotted key.

YAML is read with a ``yaml.SafeLoader`` subclass that refuses duplicate keys (plain PyYAML keeps
the last one silently) and reads ``1e-4`` as a float (YAML 1.2; PyYAML's 1.1 rules return a string).

Nothing here touches torch or ms-swift: ``pipeline.train.swift_args`` turns a config into ms-swift's
argument objects.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from pipeline.config_schema import (
    PIXEL_ENV_VARS,
    SECTIONS,
    ConfigFieldError,
    CustomConfig,
    DataConfig,
    DistillConfig,
    ModelConfig,
    RlhfConfig,
    TrainConfig,
    config_reference,
)
from pipeline.errors import ConfigError

__all__ = [
    "ConfigFieldError",
    "CustomConfig",
    "DataConfig",
    "DistillConfig",
    "ModelConfig",
    "RlhfConfig",
    "TrainConfig",
    "apply_vision_env",
    "config_chain",
    "config_reference",
    "load_config",
    "load_yaml",
    "needs_live_teacher",
    "parse_override",
    "resolve_dict",
    "vision_env",
]

OVERRIDES = "overrides"  # the origin label of keys set by ``overrides``


# ----------------------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and resolves YAML 1.2 floats such as ``1e-4``."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may legitimately repeat keys
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+"
        r"(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def load_yaml(path: str | os.PathLike[str]) -> Any:
    """Parse one YAML file with the config loader's rules (safe, no duplicate keys, ``1e-4`` is a float)."""
    try:
        with open(path, encoding="utf-8") as stream:  # a stream, so YAML errors carry the file name
            return yaml.load(stream, Loader=_StrictLoader)
    except FileNotFoundError:
        raise ConfigError(f"{_show(path)}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{_show(path)}: not UTF-8 text (byte {exc.object[exc.start : exc.start + 1]!r} at offset "
            f"{exc.start}); save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{_show(path)}: cannot read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{_show(path)}: invalid YAML: {yaml_problem(exc)}") from None
    except ValueError as exc:  # PyYAML's int(): a literal past Python's 4300-digit limit
        raise ConfigError(f"{_show(path)}: invalid YAML: {exc}") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: what is wrong and at which line and column."""
    mark = getattr(exc, "problem_mark", None)
    problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
    if mark is None:
        return problem
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    where = f" ({' '.join(context.split())}" if context else ""
    if where and context_mark is not None:
        where += f" at line {context_mark.line + 1}"
    where += ")" if where else ""
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}{where}"


def parse_override(item: str) -> tuple[str, Any]:
    """``"rlhf.beta=0.1"`` -> ``("rlhf.beta", 0.1)``: the value is read as YAML with the loader's rules."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    key, value = item.split("=", 1)
    try:
        return key.strip(), yaml.load(value, Loader=_StrictLoader)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an int past Python's 4300-digit limit
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem}); quote it") from None


def _show(path: str | os.PathLike[str]) -> str:
    """A path as the user knows it: relative to the working directory when it lies below it."""
    p = Path(path)
    if p.is_absolute():
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            return str(p)
    return str(p)


# ---------------------------------------------------------------------------------- inheritance


def _read_chain(path: str | os.PathLike[str]) -> list[tuple[Path, dict[str, Any]]]:
    """The files of the chain with their raw mappings (``inherit`` removed), root first."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: set[Path] = set()
    current = Path(path)
    while True:
        real = current.resolve()
        if real in seen:
            cycle = " -> ".join(_show(p) for p, _ in chain) + f" -> {_show(current)}"
            raise ConfigError(f"{_show(chain[-1][0])}: inherit: inheritance cycle {cycle}")
        seen.add(real)
        raw = load_yaml(current)
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{_show(current)}: the top level must be a mapping of sections, got {type(raw).__name__}"
            )
        parent = raw.pop("inherit", None)
        chain.append((current, raw))
        if parent is None:
            break
        if not isinstance(parent, str) or not parent.strip():
            raise ConfigError(
                f"{_show(current)}: inherit: must be the parent's path relative to this file, got {parent!r}"
            )
        nxt = Path(os.path.normpath(current.parent / parent))
        if not nxt.is_file():
            raise ConfigError(
                f"{_show(current)}: inherit: parent file {parent!r} not found (looked for {_show(nxt)})"
            )
        current = nxt
    chain.reverse()
    return chain


def config_chain(path: str | os.PathLike[str]) -> list[Path]:
    """The files ``path`` inherits from, root first and ``path`` last (e.g. for DVC ``deps``)."""
    return [p for p, _ in _read_chain(path)]


def _record(origins: dict[str, str], key: str, value: Any, label: str) -> None:
    origins[key] = label
    if isinstance(value, dict):
        for k, v in value.items():
            _record(origins, f"{key}.{k}", v, label)


def _merge(
    base: dict[str, Any], child: dict[str, Any], label: str, origins: dict[str, str], prefix: str = ""
) -> dict[str, Any]:
    """Deep merge: mappings merge, everything else replaces. Records who set each dotted key."""
    out = dict(base)
    for k, v in child.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, label, origins, key + ".")
            origins[key] = label
        else:
            out[k] = copy.deepcopy(v)
            _record(origins, key, v, label)
    return out


def _apply_overrides(merged: dict[str, Any], overrides: dict[str, Any], origins: dict[str, str]) -> None:
    for dotted, value in overrides.items():
        parts = dotted.split(".") if isinstance(dotted, str) else []
        if not parts or not all(parts):
            raise ConfigError(f"{OVERRIDES}: {dotted!r}: expected a dotted key such as 'rlhf.beta'")
        if parts[0] == "inherit":
            raise ConfigError(f"{OVERRIDES}: inherit: cannot be overridden; load the other file instead")
        node = merged
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
                origins[".".join(parts[: i + 1])] = OVERRIDES
            elif not isinstance(child, dict):
                raise ConfigError(
                    f"{OVERRIDES}: {dotted}: {'.'.join(parts[: i + 1])} is a value ({child!r}), not a section"
                )
            node = child
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf] = _merge(node[leaf], value, OVERRIDES, origins, dotted + ".")
        else:
            node[leaf] = copy.deepcopy(value)
            _record(origins, dotted, value, OVERRIDES)
        origins[dotted] = OVERRIDES


def _resolve(
    path: str | os.PathLike[str], overrides: dict[str, Any] | None
) -> tuple[dict[str, Any], dict[str, str], list[Path]]:
    chain = _read_chain(path)
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for file, raw in chain:
        merged = _merge(merged, raw, _show(file), origins)
    if overrides:
        _apply_overrides(merged, overrides, origins)
    return merged, origins, [p for p, _ in chain]


# ------------------------------------------------------------------------------ typed conversion


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


_EXPONENT_FLOAT = re.compile(r"[-+]?[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widened to float where declared)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], key)
    elif origin is list:
        if isinstance(value, list):
            return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str):
            raise ConfigFieldError(key, f"must be a list, e.g. [{value}], got the string {value!r}")
    elif origin is dict:
        if isinstance(value, dict):
            for k in value:
                if not isinstance(k, str):
                    raise ConfigFieldError(f"{key}.{k}", "keys must be strings")
            return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int of hundreds of digits has no float
                raise ConfigFieldError(key, "too large for a float (the largest is about 1.8e308)") from None
        # PyYAML (YAML 1.1) reads an unquoted 1e-4 as a string; DVC writes params.yaml that way and
        # other readers of it may use plain yaml.safe_load. Only that exponent form is accepted.
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
            return float(value)
    elif tp is str and isinstance(value, str):
        return value
    hint = ""
    if (
        isinstance(value, str)
        and tp in (int, float)
        and re.fullmatch(r"[-+]?[0-9._]+(?:[eE][-+]?[0-9]+)?", value)
    ):
        hint = " (a quoted number: write it unquoted)"
    raise ConfigFieldError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}{hint}")


def _build_section(cls: type, raw: Any, name: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigFieldError(name, f"must be a mapping of keys, got {type(raw).__name__} {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for k in raw:
        if k not in known:
            close = difflib.get_close_matches(str(k), list(known), n=1)
            hint = f"; did you mean {name}.{close[0]}?" if close else ""
            if name == "train":
                hint += " Other ms-swift arguments go under train.extra."
            raise ConfigFieldError(f"{name}.{k}", f"unknown key{hint} (known: {', '.join(known)})")
    kwargs = {}
    for fname, f in known.items():
        if fname in raw:
            kwargs[fname] = _coerce(raw[fname], hints[fname], f"{name}.{fname}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigFieldError(f"{name}.{fname}", f"required key is missing: {f.metadata['help']}")
    return cls(**kwargs)


def _lookup(origins: dict[str, str], key: str) -> str | None:
    key = re.sub(r"\[\d+\]", "", key)
    while key:
        if key in origins:
            return origins[key]
        key = key.rpartition(".")[0]
    return None


def _build(merged: dict[str, Any], origins: dict[str, str], files: list[Path]) -> DistillConfig:
    leaf = _show(files[-1])
    try:
        for k in merged:
            if k not in SECTIONS:
                close = difflib.get_close_matches(str(k), list(SECTIONS), n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigFieldError(
                    str(k), f"unknown section{hint} (known: inherit, {', '.join(SECTIONS)})"
                )
        sections: dict[str, Any] = {}
        for name, cls in SECTIONS.items():
            raw = merged.get(name)
            if raw is None and name == "rlhf":
                sections[name] = None
            elif raw is None and name == "custom":
                sections[name] = cls()
            elif raw is None:
                raise ConfigFieldError(name, f"required section is missing (a `{name}:` mapping)")
            else:
                sections[name] = _build_section(cls, raw, name)
        return DistillConfig(**sections, source_files=[str(f) for f in files])
    except ConfigFieldError as err:
        where = next((o for k in err.keys if (o := _lookup(origins, k))), None)
        if where is None:
            where = leaf if len(files) == 1 else f"{leaf} (or a parent)"
        raise ConfigError(f"{where}: {err}") from None


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> DistillConfig:
    """Load ``path`` with its inheritance chain and dotted ``overrides`` into a checked ``DistillConfig``.

    Never touches model paths or datasets: a config for a machine you are not on still loads.
    """
    merged, origins, files = _resolve(path, overrides)
    return _build(merged, origins, files)


def resolve_dict(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The merged raw mapping (no ``inherit``), checked like ``load_config``; dumping it gives a
    standalone config that loads to the same ``DistillConfig``."""
    return load_resolved(path, overrides)[1]


def load_resolved(
    path: str | os.PathLike[str], overrides: dict[str, Any] | None = None
) -> tuple[DistillConfig, dict[str, Any]]:
    """``load_config`` and ``resolve_dict`` from one read of the chain: the config and its mapping."""
    merged, origins, files = _resolve(path, overrides)
    return _build(merged, origins, files), merged


# ------------------------------------------------------------------------------ run environment
def vision_env(data: DataConfig) -> dict[str, str]:
    """Environment variables that carry ``data`` image settings to qwen_vl_utils (only MIN_PIXELS:
    ``max_pixels`` travels as a template argument)."""
    return {} if data.min_pixels is None else {"MIN_PIXELS": str(data.min_pixels)}


def apply_vision_env(data: DataConfig, environ: Any = None) -> None:
    """Set ``vision_env(data)`` in ``environ`` (default ``os.environ``), refusing image-size variables
    that something else set: they would change encoding without being in the config or the cache
    fingerprint. Call it before the first processor loads: ms-swift applies qwen_vl_utils settings
    once per process. Forked dataloader workers inherit them; spawned ones must call this again."""
    env = os.environ if environ is None else environ
    wanted = vision_env(data)
    for var in PIXEL_ENV_VARS:
        have = env.get(var)
        if not have or have == wanted.get(var):
            continue
        # ms-swift derives IMAGE_MIN_TOKEN_NUM from MIN_PIXELS in-process; that one is ours.
        if (
            var == "IMAGE_MIN_TOKEN_NUM"
            and "MIN_PIXELS" in wanted
            and env.get("MIN_PIXELS") == wanted["MIN_PIXELS"]
        ):
            continue
        owner = "data.min_pixels" if "MIN" in var else "data.max_pixels"
        raise ConfigError(
            f"environment: {var}={have} changes image sizes behind the config's back; unset it "
            f"and set {owner} instead"
        )
    env.update(wanted)


def needs_live_teacher(cfg: DistillConfig) -> bool:
    """gkd_monitor always; gkd_cached only for on-policy batches (lmbda > 0): ``TrainerVariant``'s rule."""
    cached = cfg.custom.onpolicy_cache is not None  # on-policy batches read a student-written cache
    return cfg.rlhf is not None and cfg.custom.variant.needs_live_teacher(cfg.rlhf.lmbda, cached)


def looks_local(path: str) -> bool:
    """A local path, not a model hub id (``org/name``): absolute, ``./``, ``../``, ``~``, two or more
    slashes, or something that exists here."""
    return path.startswith(("/", "./", "../", "~")) or path.count("/") >= 2 or os.path.exists(path)


def model_location(path: str, key: str, where: str | None = None) -> str:
    """THE local-or-hub decision for a model path (``model.model``, ``rlhf.teacher_model``,
    ``--tokenizer``, ``--teacher``...): a path that looks local must be a directory here and is
    returned expanded; an ``ORG/NAME`` is a hub id, returned as it is. A missing local directory, or
    a name that is neither (no slash: ms-swift would retry it on the hub), is a ``ConfigError``
    naming the key, never a hub download (which would retry and fail offline)."""
    if not looks_local(path):
        if path.count("/") != 1 or not all(path.split("/")):
            prefix = f"{where}: " if where else ""
            raise ConfigError(
                f"{prefix}{key}: {path!r} is neither a local directory nor a hub id (ORG/NAME); "
                "give the model's directory"
            )
        return path
    local = os.path.expanduser(path)
    if not os.path.isdir(local):
        prefix = f"{where}: " if where else ""
        raise ConfigError(
            f"{prefix}{key}: model directory {path!r} does not exist (a local path: looked for here, "
            "not on the model hub; a hub id is ORG/NAME)"
        )
    return local
