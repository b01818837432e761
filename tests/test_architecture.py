"""What the code says about its own shape, checked by code.

- The import graph of ``pipeline/`` has no circles (imports inside functions count, and so do imports
  under ``if TYPE_CHECKING:``: a circle that only the type checker walks is still two modules that
  each need the other).
- The library never imports the demo (``pipeline.demo``) or the CLI; ``train/losses`` imports only
  torch and the standard library; ``cache/`` imports no model code.
- Every ``dvc.yaml`` stage is a ``distill`` command whose parser accepts its arguments, and its code
  deps (files and sub-package directories) cover exactly the library its command imports
  (transitively): a code change re-runs every stage that runs that code, and each declared dep is run.
- Every dependency in ``pyproject.toml`` is imported somewhere, or is named as a runtime requirement.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "pipeline"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _module_file(name: str) -> Path | None:
    base = ROOT / Path(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def imported_names(path: Path, typing_too: bool = False) -> set[str]:
    """Absolute module names a file imports at run time (any depth); ``typing_too``: also those under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node) and not typing_too:
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            names.add(mod)
            for a in node.names:  # ``from pkg import submodule``
                names.add(f"{mod}.{a.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def project_edges(path: Path, typing_too: bool = False) -> set[Path]:
    """Project files (``pipeline/``) that importing ``path`` executes directly, parents' __init__ included
    (``typing_too``: and those its type annotations import)."""
    out: set[Path] = set()
    for name in imported_names(path, typing_too):
        if not name.startswith("pipeline"):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            f = _module_file(".".join(parts[:i]))
            if f is not None:
                out.add(f)
    out.discard(path)
    return out


def closure(start: Path) -> set[Path]:
    seen: set[Path] = set()
    todo = [start]
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        seen.add(f)
        todo.extend(project_edges(f) - seen)
    return seen


LIBRARY = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)


def _graph() -> dict[Path, set[Path]]:
    return {f: project_edges(f, typing_too=True) for f in LIBRARY}


def test_no_import_cycles():
    graph = _graph()
    # Tarjan's strongly connected components: any component of two or more files is a circle.
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    on: set[Path] = set()
    cycles: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v: Path) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(str(w.relative_to(ROOT)))
                if w == v:
                    break
            # a package __init__ importing its own submodules is not a circle worth flagging only
            # when the submodule does not import back; Tarjan already tells them apart.
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    assert not cycles, f"import circles: {cycles}"


def test_library_never_imports_demo_or_cli():
    """``cli.py`` and ``commands/`` are the CLI layer on top; ``demo/`` is imported by nothing below."""
    bad = []
    for f in LIBRARY:
        rel = f.relative_to(PKG)
        if rel.parts[0] in ("demo", "commands") or rel.name == "cli.py":
            continue
        for name in imported_names(f):
            if name in ("pipeline.cli", "pipeline.demo", "pipeline.commands") or name.startswith(
                ("pipeline.demo.", "pipeline.commands.")
            ):
                bad.append(f"{rel}: {name}")
    assert not bad, bad


def test_package_inits_hold_no_code():
    """Importing ``pipeline.x.y`` runs every parent ``__init__``: they import nothing and define nothing,
    so importing one demo module never drags in the scene renderer, and ``dvc.yaml`` can leave them out."""
    for f in PKG.rglob("__init__.py"):
        tree = ast.parse(f.read_text())
        code = [
            n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef))
        ]
        assert not code, f"{f.relative_to(ROOT)} holds code: {[type(n).__name__ for n in code]}"


STDLIB = set(sys.stdlib_module_names)


def _top_level(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names if n}


def test_losses_import_only_torch():
    assert _top_level(imported_names(PKG / "train" / "losses.py")) - STDLIB <= {"torch"}


def test_cache_package_imports_no_model_code():
    allowed = {"numpy", "pyarrow", "torch", "pipeline"}
    for f in (PKG / "cache").glob("*.py"):
        names = imported_names(f)
        assert _top_level(names) - STDLIB <= allowed, f"{f.name}: {sorted(_top_level(names) - STDLIB)}"
        own = {n for n in names if n.startswith("pipeline")}
        # pipeline.hashing (the one file checksum) and pipeline.files (atomic writes): standard library only
        assert all(
            n.startswith(("pipeline.cache", "pipeline.errors", "pipeline.hashing", "pipeline.files"))
            or n == "pipeline"
            for n in own
        ), f"{f.name}: {sorted(own)}"


# ---- the shape of the code ----------------------------------------------------------------------

MAX_FUNCTION_LINES = 60
CACHE = PKG / "cache"
OUTSIDE_CACHE = [f for f in LIBRARY if not f.is_relative_to(CACHE)]


def _calls(tree: ast.AST, name: str) -> list[int]:
    return [
        n.lineno
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
    ]


def test_no_function_is_longer_than_60_lines():
    long = []
    for f in LIBRARY:
        for n in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([d.lineno for d in n.decorator_list] + [n.lineno])
                if (n.end_lineno or start) - start + 1 > MAX_FUNCTION_LINES:
                    long.append(f"{f.relative_to(ROOT)}:{n.lineno} {n.name}")
    assert not long, long


def test_the_library_logs_and_only_commands_print():
    """``print`` is the commands' (their results on stdout); the library speaks through logging."""
    found = [
        f"{f.relative_to(ROOT)}:{line}"
        for f in LIBRARY
        if not (f.is_relative_to(PKG / "commands") or f.name == "cli.py")
        for line in _calls(ast.parse(f.read_text(), str(f)), "print")
    ]
    assert not found, found


def test_training_evaluation_and_benches_import_nothing_of_the_teacher_package():
    bad = [
        f"{f.relative_to(ROOT)}: {name}"
        for part in ("train", "evaluate", "bench")
        for f in sorted((PKG / part).glob("*.py"))
        for name in sorted(imported_names(f, typing_too=True))
        if name == "pipeline.teacher" or name.startswith("pipeline.teacher.")
    ]
    assert not bad, bad


def test_only_the_cache_package_knows_the_cache_layout():
    """Outside ``pipeline/cache/`` nothing names a cache file or reads a manifest key: it asks
    ``CacheDir`` / ``SplitDir`` / ``Manifest`` (``pipeline/cache/cachedir.py``)."""
    layout_names = {"MANIFEST_NAME", "PARTS_DIR", "SHARD_RE", "read_json", "LOCK_NAME"}
    manifest_keys = re.compile(r"manifest(\(\))?(\.get\(|\[)")
    cache_join = re.compile(r"teacher_cache[^\n]*\)\s*/")
    bad = []
    for f in OUTSIDE_CACHE:
        text = f.read_text()
        tree = ast.parse(text, str(f))
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("pipeline.cache"):
                bad += [f"{f.relative_to(ROOT)}: imports {a.name}" for a in n.names if a.name in layout_names]
        for i, line in enumerate(text.splitlines(), 1):
            if manifest_keys.search(line) or cache_join.search(line) or '"manifest.json"' in line:
                bad.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not bad, bad


# ---- dvc.yaml stages -------------------------------------------------------------------------------


def _stages() -> list[tuple[str, Any]]:
    """Every stage of ``dvc.yaml`` and ``stages/demo/dvc.yaml`` as DVC resolves it (``foreach`` expanded,
    ``${...}`` filled in, paths from each stage's ``wdir``)."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return [(s.addressing, s) for s in repo.index.stages]


STAGES = _stages()
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def _distill_args(cmd: str) -> list[str]:
    """The arguments after ``distill`` in a stage's command (leading ``VAR=value`` settings skipped)."""
    words = shlex.split(cmd)
    while words and ENV_ASSIGNMENT.match(words[0]):
        words.pop(0)
    assert words and words[0] == "distill", f"expected a `distill` command, got {cmd!r}"
    return words[1:]


def _parse(cmd: str) -> Any:
    from pipeline.cli import build_parser

    try:
        return build_parser().parse_args(_distill_args(cmd))
    except SystemExit:
        raise AssertionError(f"`distill` rejects the arguments of {cmd!r}") from None


def stage_code(cmd: str) -> set[Path]:
    """The library files a stage's command runs: the dispatcher, the command's module and what it
    imports (the other commands' modules only build their parsers)."""
    module = sys.modules[_parse(cmd).func.__module__]
    dispatcher = {f for f in project_edges(PKG / "cli.py") if not f.is_relative_to(PKG / "commands")}
    runs = closure(Path(module.__file__ or "")) | {PKG / "cli.py"}
    for f in dispatcher:
        runs |= closure(f)
    return {f for f in runs if f.name != "__init__.py"}


def _declared_code(stage: Any) -> list[Path]:
    return [Path(d.fs_path) for d in stage.deps if Path(d.fs_path).is_relative_to(PKG)]


@pytest.mark.parametrize("name,stage", STAGES, ids=[n for n, _ in STAGES])
def test_every_stage_is_a_distill_command_its_parser_accepts(name, stage):
    args = _parse(stage.cmd)
    assert callable(args.func), name


@pytest.mark.parametrize("name,stage", STAGES, ids=[n for n, _ in STAGES])
def test_dvc_stage_code_deps_cover_the_code_it_runs(name, stage):
    """(``python -m tests.dvc_deps`` rewrites the deps from the code when this fails.)"""
    declared = _declared_code(stage)
    runs = stage_code(stage.cmd)
    uncovered = sorted(
        str(f.relative_to(ROOT)) for f in runs if not any(f.is_relative_to(d) for d in declared)
    )
    unused = sorted(str(d.relative_to(ROOT)) for d in declared if not any(f.is_relative_to(d) for f in runs))
    assert not uncovered and not unused, (
        f"{name}: code deps drift from the code the stage runs.\n  not declared: {uncovered}\n"
        f"  declared but not run: {unused}\n"
        f"  the stage runs: {sorted(str(f.relative_to(ROOT)) for f in runs)}"
    )


def test_cache_stages_run_no_training_code():
    caches = [(n, s) for n, s in STAGES if n.startswith("cache@")]
    assert len(caches) >= 2, [n for n, _ in STAGES]
    for name, stage in caches:
        code = {f for d in _declared_code(stage) for f in ([d] if d.is_file() else d.rglob("*.py"))}
        assert not [f for f in code if f.is_relative_to(PKG / "train")], name


# ---- declared dependencies ------------------------------------------------------------------------

# Declared for what they bring at run time, not for an import of ours.
RUNTIME_ONLY = {
    "deepspeed": "ms-swift's DeepSpeed ZeRO-2/3 training (configs/deepspeed/), imported by transformers",
    "qwen_vl_utils": "Qwen2.5-VL image preprocessing inside ms-swift's template",
    "decord": "ms-swift's Qwen-VL template imports it for video inputs",
    "dvc": "the `dvc repro` pipeline (a command, not an import)",
    "trl": "ms-swift's trainers are built on it; tested versions pinned",
    "peft": "LoRA tuners applied by ms-swift",
    "torchvision": "Qwen2.5-VL's image processor",
    "tokenizers": "the fast tokenizers transformers loads",
    "scipy": "ms-swift imports it at start-up",
    "msgspec": "ms-swift's GKD trainer (swift/rlhf_trainers/utils.py) imports it without declaring it",
    "datasets": "ms-swift's dataset pipeline; `distill inspect --export` output opens with it",
}
IMPORT_NAME = {"ms-swift": "swift", "pyyaml": "yaml", "pillow": "PIL", "rouge-score": "rouge_score"}


def test_every_dependency_is_used():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    used: set[str] = set()
    for f in LIBRARY:
        used |= _top_level(imported_names(f))
    unused = []
    for spec in deps:
        dist = re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower()
        mod = IMPORT_NAME.get(dist, dist.replace("-", "_"))
        if mod not in used and mod not in RUNTIME_ONLY:
            unused.append(dist)
    assert not unused, f"declared but never imported (use it or name why it is needed): {unused}"
