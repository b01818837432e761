"""``distill check``: can this teacher and student be distilled together (tokenizer, template, images)."""

from __future__ import annotations

import argparse

from pipeline.commands.options import add_config, load

HELP = "check teacher/student compatibility (tokenizer, template, processor)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)


def run(args: argparse.Namespace) -> int:
    from pipeline.compat import check_config

    print(check_config(load(args)))
    return 0
