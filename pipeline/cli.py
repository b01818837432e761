"""``distill``: the command-line entry point, and the one front end of the DVC pipeline.

Each subcommand is a module of ``pipeline/commands/`` with ``HELP``, ``add_arguments(parser)`` and
``run(args) -> exit code`` (``bench`` gives each of its subcommands its own handler). The modules
import their library lazily, inside ``run``, so ``distill --help`` and data-only commands start fast
(importing ms-swift's trainers costs ~10 s and ~1 GB), and a DVC stage's code is its command's module
and what that ``run`` imports. A ``DistillError`` is printed as one line and exits 2; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from types import ModuleType

from pipeline import logs
from pipeline.commands import (
    bench,
    cache,
    check,
    compare,
    demo_assets,
    evaluate,
    evidence,
    export_written,
    init_student,
    inspect_cache,
    prepare,
    real_size_assets,
    resolve,
    sweep,
    train,
)
from pipeline.errors import exit_code

# In the order `distill --help` lists them: the demo pipeline's steps, then the tools around it.
COMMANDS: dict[str, ModuleType] = {
    "demo-assets": demo_assets,
    "real-size-assets": real_size_assets,
    "prepare": prepare,
    "resolve": resolve,
    "train": train,
    "check": check,
    "init-student": init_student,
    "cache": cache,
    "export-written": export_written,
    "inspect": inspect_cache,
    "evaluate": evaluate,
    "compare": compare,
    "sweep": sweep,
    "evidence": evidence,
    "bench": bench,
}


def _console_options() -> argparse.ArgumentParser:
    """``--verbose`` / ``--quiet``, accepted before or after the subcommand (:mod:`pipeline.logs`)."""
    common = argparse.ArgumentParser(add_help=False)
    level = common.add_mutually_exclusive_group()
    for short, long, const, what in (
        (
            "-v",
            "--verbose",
            logs.VERBOSE,
            "also every library's INFO lines (ms-swift, transformers), with logger names",
        ),
        (
            "-q",
            "--quiet",
            logs.QUIET,
            "errors only: no progress bars, notes or warnings (results still go to stdout)",
        ),
    ):
        level.add_argument(
            short,
            long,
            action="store_const",
            const=const,
            dest="verbosity",
            default=argparse.SUPPRESS,
            help=what,
        )
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _console_options()
    parser = argparse.ArgumentParser(
        prog="distill", description=__doc__.split("\n")[0] if __doc__ else None, parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, parents=[common])
        module.add_arguments(p)
        if hasattr(module, "run"):
            p.set_defaults(func=module.run)
    return parser


def leave_marker(args: argparse.Namespace) -> None:
    """Append a line to ``$DISTILL_STAGE_MARKERS`` (if set) after a command succeeds: lets the DVC
    pipeline test count how often each stage ran, and with which config."""
    target = os.environ.get("DISTILL_STAGE_MARKERS")
    if not target:
        return
    config = getattr(args, "config", None)
    line = {"stage": args.command, "time": time.time(), "config": str(config) if config else ""}
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(getattr(args, "verbosity", logs.inherited()))
    code = exit_code(lambda: args.func(args))
    if code == 0:
        leave_marker(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
