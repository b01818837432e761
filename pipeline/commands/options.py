"""Argument types and options that several ``distill`` commands share, and the one config loader."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def parse_sets(items: Sequence[str] | None) -> dict[str, Any]:
    """``--set rlhf.beta=0.1`` -> ``{"rlhf.beta": 0.1}`` (values parsed as YAML scalars)."""
    from pipeline.config import parse_override

    return dict(parse_override(item) for item in items or [])


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--limit 0`` or ``-3`` would silently mean "all" or "all but 3")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required, type=Path, help="YAML config (may inherit: a parent)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. rlhf.beta=0.1"
    )


def load(args: argparse.Namespace) -> Any:
    """The ``DistillConfig`` of ``--config`` with its ``--set`` overrides."""
    from pipeline.config import load_config

    return load_config(args.config, overrides=parse_sets(args.set))


def load_with_mapping(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """``load`` and the standalone mapping that loads to the same config (one read of the chain), for
    a command that records the config it ran with beside its outputs."""
    from pipeline.config import load_resolved

    return load_resolved(args.config, parse_sets(args.set))


def dump_config(resolved: dict[str, Any], out: Path) -> None:
    """Write a resolved config mapping as a standalone YAML config (sorted keys: stable bytes for DVC)."""
    import yaml

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(resolved, sort_keys=True))


def is_main_process() -> bool:
    """Rank 0 under torchrun (or no torchrun): the one process that writes run records."""
    return int(os.environ.get("RANK", "0")) == 0
