"""``distill resolve``: every run's and cache's config from ``params.yaml``, knobs applied, one file each.

The DVC stages train, cache and evaluate from these files; DVC hashes each one, so a stage re-runs
exactly when the config it runs with changes (a ``student.beta`` change rewrites the GKD runs' files
and leaves the caches' and the SFT runs' files as they were).
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack
from pathlib import Path

from pipeline.commands.options import dump_config
from pipeline.files import atomic_path

HELP = "write each run's and cache's config with params.yaml's knobs applied (what DVC stages run)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", type=Path, default=Path("params.yaml"), help="knobs, runs and caches")
    p.add_argument("--out", type=Path, required=True, help="directory for <name>.yaml per run and cache")


def run(args: argparse.Namespace) -> int:
    from pipeline.params import every_entry, resolved_config

    # Every entry is resolved and checked before the first file is written, and every file is written
    # to a temporary name and renamed only once all are complete: a bad entry or a full disk leaves
    # --out as it was, never half of the configs new and half stale.
    resolved = [(entry, resolved_config(entry, args.params)) for entry in every_entry(args.params)]
    with ExitStack() as renames:
        for entry, config in resolved:
            dump_config(config, renames.enter_context(atomic_path(args.out / f"{entry.name}.yaml")))
    for entry, _ in resolved:
        path = args.out / f"{entry.name}.yaml"
        print(f"{entry.name}: {entry.config} + {', '.join(entry.params) or 'no knobs'} -> {path}")
    return 0
