"""The docs cannot rot: their commands run, parse, and name real files, keys and anchors.

Convention for doc writers (docs/*.md and README.md):

- A fenced block opened with ```` ```bash runnable ```` holds commands that run on the CPU demo from the
  repository root. One ``distill ...`` command per line (a trailing ``\\`` continues a line, ``#``
  starts a comment); no pipes, ``&&``, variables or other programs. ```` ```bash runnable exit=2 ````
  expects that exit status from every command of the block (an error demonstration).
- Every other block (plain ```` ```bash ````: GPU and multi-node commands, ``dvc``, ...) is not run,
  but every ``distill``, ``python -m pipeline.cli`` or ``torchrun ... -m pipeline.cli`` command in it
  must parse with the real argument parser, and its ``--config`` must exist and load with its ``--set``
  overrides.

How runnable blocks run: ``configs/`` is copied into a temporary directory, the working directory of
every command. docs/cli.md runs first (it builds the demo: assets, prepared data, teacher, cache,
students), then the other docs/*.md in name order, then README.md, each in document order, all in that
one directory (so only one runnable block may build the demo assets: ``demo-assets`` refuses an
existing directory). All commands run in ONE Python process that calls ``pipeline.cli.main`` (the
``distill`` entry point) once per command, with the environment reset before each, so ms-swift is
imported once. A failing command does not stop the others; each block is its own test. Sizes shrink: these arguments are appended to the matching
commands (appended last, so they win over the doc's own values):

    demo-assets           --n-train 24 --n-val 8 --n-test 8
    train                 --set train.max_steps=2 (save_steps, eval_steps 2; logging_steps 1;
                          per-device batch 4 train / 8 eval; rlhf.max_completion_length 16 if rlhf)
    bench cache-format    --n 2000
    bench cache-write     --set data.dataset=[data/prepared/val.jsonl]
    bench train-step      --steps 2 --rounds 1
    every --config        --set custom.written_unfinished=keep (a teacher trained for 2 steps never
                          stops within max_new_tokens: its pool rows are kept, not skipped, so the
                          written-response cache and its students stay walkable)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHELL_INFOS = ("bash", "sh", "shell", "console")
OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", "<", ">", ">>"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")

DEMO_SIZES = ["--n-train", "24", "--n-val", "8", "--n-test", "8"]
TRAIN_SIZES = {
    "train.max_steps": 2,
    "train.save_steps": 2,
    "train.eval_steps": 2,
    "train.logging_steps": 1,
    "train.per_device_train_batch_size": 4,
    "train.per_device_eval_batch_size": 8,
}
SIZE_ARGS: dict[tuple[str, ...], list[str]] = {
    ("demo-assets",): DEMO_SIZES,
    ("bench", "cache-format"): ["--n", "2000"],
    ("bench", "cache-write"): ["--set", "data.dataset=[data/prepared/val.jsonl]"],
    ("bench", "train-step"): ["--steps", "2", "--rounds", "1"],
}


# ------------------------------------------------------------------------------------------ parsing


def doc_files() -> list[Path]:
    """docs/cli.md first (it builds the demo), the other docs by name, README.md last."""
    docs = sorted((REPO / "docs").glob("*.md"), key=lambda p: (p.name != "cli.md", p.name))
    return [*docs, REPO / "README.md"]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


@dataclass(frozen=True)
class Block:
    """One fenced code block: its file, the line of its opening fence, info string and body lines."""

    doc: str
    line: int
    info: str
    body: tuple[tuple[int, str], ...]

    @property
    def words(self) -> list[str]:
        return self.info.split()

    @property
    def is_shell(self) -> bool:
        return bool(self.words) and self.words[0] in SHELL_INFOS

    @property
    def runnable(self) -> bool:
        return self.is_shell and "runnable" in self.words[1:]

    @property
    def expect_exit(self) -> int:
        for w in self.words[1:]:
            if w.startswith("exit="):
                return int(w.split("=", 1)[1])
        return 0

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file (fences of ``` or ~~~, closed by the same fence)."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i + 1
        body = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append((i + 1, lines[i]))
            i += 1
        blocks.append(Block(_rel(path), start, info, tuple(body)))
        i += 1
    return blocks


@dataclass(frozen=True)
class Command:
    """One simple command of a shell block: its tokens (env assignments stripped) and its line."""

    block: Block
    line: int
    tokens: tuple[str, ...]

    @property
    def where(self) -> str:
        return f"{self.block.doc}:{self.line}"

    @property
    def cli_args(self) -> list[str] | None:
        """The arguments after ``distill`` / ``python -m pipeline.cli`` / ``torchrun ... -m pipeline.cli``."""
        t = list(self.tokens)
        if t[:1] == ["distill"]:
            return t[1:]
        for i in range(len(t) - 1):
            if t[i] == "-m" and t[i + 1] == "pipeline.cli" and (t[0] == "torchrun" or "python" in t[0]):
                return t[i + 2 :]
        return None


def _tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def commands(block: Block) -> list[Command]:
    """The simple commands of a shell block: continuation lines joined, split at shell operators."""
    out: list[Command] = []
    pending, first = "", 0
    for number, text in block.body:
        if not pending:
            first = number
        if text.rstrip().endswith("\\"):
            pending += text.rstrip()[:-1] + " "
            continue
        words = _tokens(pending + text)
        pending = ""
        current: list[str] = []
        for w in [*words, ";"]:
            if w in OPERATORS:
                while current and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", current[0]):
                    current.pop(0)  # FOO=bar distill ...: the environment prefix is not an argument
                if current:
                    out.append(Command(block, first, tuple(current)))
                current = []
            else:
                current.append(w)
    return out


def runnable_commands(block: Block) -> list[Command]:
    """The commands of a runnable block; anything but a plain ``distill`` command is refused."""
    cmds = []
    for number, text in block.body:
        if any(op in _tokens(text) for op in OPERATORS) or re.match(r"\s*[A-Za-z_][A-Za-z0-9_]*=", text):
            raise AssertionError(f"{block.doc}:{number}: runnable blocks hold plain `distill` commands only")
    for cmd in commands(block):
        if cmd.tokens[0] != "distill":
            raise AssertionError(
                f"{cmd.where}: runnable blocks hold `distill` commands only, got {cmd.tokens[0]!r}"
            )
        cmds.append(cmd)
    return cmds


def all_blocks() -> list[Block]:
    return [b for doc in doc_files() if doc.is_file() for b in read_blocks(doc)]


def _sets(args: list[str]) -> dict[str, Any]:
    """``--set K=V`` pairs of an argument list, values read as YAML (as the CLI does)."""
    out: dict[str, Any] = {}
    for flag, value in itertools.pairwise(args):
        if flag == "--set":
            key, _, raw = value.partition("=")
            out[key] = yaml.safe_load(raw)
    return out


def _option(args: list[str], name: str) -> str | None:
    for flag, value in itertools.pairwise(args):
        if flag == name:
            return value
    return None


RUNNABLE = [b for b in all_blocks() if b.runnable]


# ------------------------------------------------------------------------- the CPU demo run


def sized_args(args: list[str], workdir: Path) -> list[str]:
    """``args`` with the test's size overrides appended (see the module docstring)."""
    from pipeline.config import load_config

    if "--config" in args:
        args = [*args, "--set", "custom.written_unfinished=keep"]
    for prefix, extra in SIZE_ARGS.items():
        if tuple(args[: len(prefix)]) == prefix:
            return [*args, *extra]
    if args[:1] != ["train"]:
        return list(args)
    overrides = dict(TRAIN_SIZES)
    config = _option(args, "--config")
    try:
        has_rlhf = config is not None and load_config(workdir / config, _sets(args)).rlhf is not None
    except Exception:  # the command itself will report a bad config
        has_rlhf = False
    if has_rlhf:
        overrides["rlhf.max_completion_length"] = 16
    sets = [x for k, v in overrides.items() for x in ("--set", f"{k}={v}")]
    return [*args, *sets]


DRIVER = r"""
import json, os, sys, time, traceback
from pipeline.cli import main

plan_path, results_path = sys.argv[1], sys.argv[2]
plan = json.load(open(plan_path))
env0 = dict(os.environ)
results = []
for item in plan:
    os.environ.clear()
    os.environ.update(env0)  # each command starts from the same environment, as a new process would
    print("\n@@@ " + item["id"] + " $ distill " + " ".join(item["argv"]), flush=True)
    t0 = time.perf_counter()
    try:
        rc = main(item["argv"])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        rc = 1
    sys.stdout.flush()
    sys.stderr.flush()
    results.append({"id": item["id"], "rc": rc, "seconds": round(time.perf_counter() - t0, 2)})
    with open(results_path, "w") as fh:
        json.dump(results, fh)
"""


@dataclass
class DemoRun:
    workdir: Path
    log: str
    results: dict[str, dict[str, Any]]
    plan: list[dict[str, Any]]

    def output(self, cid: str, tail: int = 6000) -> str:
        start = self.log.find(f"\n@@@ {cid} $")
        if start < 0:
            return "(no output: the command was not reached)"
        end = self.log.find("\n@@@ ", start + 1)
        return self.log[start : end if end >= 0 else len(self.log)][-tail:]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """Run every runnable command of the docs once, in order, in a temporary copy of configs/."""
    work = tmp_path_factory.mktemp("docs_demo")
    shutil.copytree(REPO / "configs", work / "configs")
    plan = []
    for block in RUNNABLE:
        for i, cmd in enumerate(runnable_commands(block)):
            assert cmd.cli_args is not None
            plan.append(
                {
                    "id": f"{block.where}#{i}",
                    "argv": sized_args(cmd.cli_args, work),
                    "expect": block.expect_exit,
                }
            )
    (work / "plan.json").write_text(json.dumps(plan, indent=1))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "DVC_NO_ANALYTICS": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    log_path, results_path = work / "run.log", work / "results.json"
    # A failing command does not fail the driver; a dying driver is reported by the blocks it left.
    with open(log_path, "w") as log, contextlib.suppress(subprocess.CalledProcessError):
        subprocess.run(
            [sys.executable, "-c", DRIVER, str(work / "plan.json"), str(results_path)],
            cwd=work,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=1800,
        )
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    return DemoRun(work, log_path.read_text(errors="replace"), {r["id"]: r for r in results}, plan)


@pytest.mark.slow
@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.where)
def test_runnable_block(block: Block, demo_run: DemoRun) -> None:
    for item in (p for p in demo_run.plan if p["id"].startswith(block.where + "#")):
        result = demo_run.results.get(item["id"])
        command = "distill " + " ".join(item["argv"])
        if result is None:
            pytest.fail(
                f"{block.where}: `{command}` did not finish (the runner stopped); log tail:\n"
                f"{demo_run.log[-6000:]}"
            )
        if result["rc"] != item["expect"]:
            pytest.fail(
                f"{block.where}: `{command}` exited {result['rc']} (expected {item['expect']}) in "
                f"{demo_run.workdir}:\n{demo_run.output(item['id'])}"
            )


# ----------------------------------------------------------------------- static checks (fast)


def test_runnable_blocks_hold_only_distill_commands() -> None:
    for block in RUNNABLE:
        assert runnable_commands(block), f"{block.where}: empty runnable block"


def test_cli_md_shows_every_subcommand() -> None:
    from pipeline.cli import build_parser

    shown = {
        tuple(c.cli_args[:2])
        for b in read_blocks(REPO / "docs" / "cli.md")
        if b.is_shell
        for c in commands(b)
        if c.cli_args
    }

    def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, ...]]:
        out: list[tuple[str, ...]] = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out += [(name, *rest) for rest in subcommands(sub)] or [(name,)]
        return out

    names = subcommands(build_parser())
    missing = [" ".join(n) for n in names if not any(s[: len(n)] == n for s in shown)]
    assert not missing, f"docs/cli.md has no example of: {missing}"


def test_documented_commands_parse_and_their_configs_load() -> None:
    import io

    from pipeline.cli import build_parser
    from pipeline.config import load_config
    from pipeline.config_schema import DEEPSPEED_PRESETS

    problems: list[str] = []
    extra_checks = []
    for block in (b for b in all_blocks() if b.is_shell):
        for cmd in commands(block):
            args = cmd.cli_args
            if args is None:
                continue
            err = io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    build_parser().parse_args(args)
            except SystemExit:
                problems.append(f"{cmd.where}: `{' '.join(args)}` does not parse: {err.getvalue().strip()}")
                continue
            config = _option(args, "--config")
            if config is None:
                continue
            if not (REPO / config).is_file():
                problems.append(f"{cmd.where}: config {config} does not exist")
                continue
            if block.expect_exit:
                continue  # an error demonstration may use a config that does not load
            try:
                cfg = load_config(REPO / config, _sets(args))
            except Exception as exc:
                problems.append(f"{cmd.where}: {config} with {_sets(args)} does not load: {exc}")
                continue
            ds = cfg.train.deepspeed
            if ds is not None and ds not in DEEPSPEED_PRESETS and not (REPO / ds).is_file():
                problems.append(f"{cmd.where}: train.deepspeed {ds} does not exist")
            if cfg.train.extra:
                extra_checks.append((cmd, cfg))
    if extra_checks:  # imports ms-swift's argument classes: only when a doc sets train.extra
        from pipeline.train.swift_args import check_extra_keys

        for cmd, cfg in extra_checks:
            try:
                check_extra_keys(cfg)
            except Exception as exc:
                problems.append(f"{cmd.where}: {exc}")
    assert not problems, "\n".join(problems)


CONFIG_KEY = re.compile(r"^(model|data|train|rlhf|custom)\.([a-z_]+)")


def test_config_keys_named_in_docs_exist() -> None:
    """Every `section.key` in inline code names a real config key (`model.layers.*`-style globs are
    checkpoint key names, not config keys)."""
    from pipeline.config_schema import SECTIONS

    problems = []
    for doc in doc_files():
        for number, text in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for span in re.findall(r"`([^`]+)`", text):
                for word in re.split(r"[\s=:]+", span):
                    m = CONFIG_KEY.match(word)
                    if not m or "*" in word:
                        continue
                    section, key = m.groups()
                    if key not in {f.name for f in dataclasses.fields(SECTIONS[section])}:  # type: ignore[arg-type]
                        problems.append(f"{_rel(doc)}:{number}: `{section}.{key}` is not a config key")
    assert not problems, "\n".join(problems)


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    inside, out = False, set()
    for text in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(text):
            inside = not inside
        elif not inside and (m := re.match(r"^#{1,6}\s+(.*)$", text)):
            out.add(_slug(m.group(1)))
    return out


def test_relative_links_and_anchors_resolve() -> None:
    problems = []
    for doc in doc_files():
        inside = False
        for number, text in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            if FENCE.match(text):
                inside = not inside
            if inside:
                continue
            for target in LINK.findall(text):
                if re.match(r"^[a-z]+:", target):
                    continue  # http(s), mailto
                path, _, anchor = target.partition("#")
                dest = (doc.parent / path).resolve() if path else doc
                if not dest.exists():
                    problems.append(f"{_rel(doc)}:{number}: link to missing {path}")
                elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                    problems.append(f"{_rel(doc)}:{number}: no heading #{anchor} in {_rel(dest)}")
    assert not problems, "\n".join(problems)
