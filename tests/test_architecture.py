"""What the code says about its own shape, checked by code.

- The import graph of ``pipeline/`` has no circles (imports inside functions count; imports under
  ``if TYPE_CHECKING:`` do not, they never run).
- The library never imports the demo (``pipeline.demo``) or the CLI; ``train/losses`` imports only
  torch and the standard library; ``cache/`` imports no model code.
- Every ``dvc.yaml`` stage lists as deps exactly the library files its script imports (transitively),
  so a code change re-runs exactly the stages that run that code.
- Every dependency in ``pyproject.toml`` is imported somewhere, or is named as a runtime requirement.
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

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


def imported_names(path: Path) -> set[str]:
    """Absolute module names a file imports at run time (any depth, TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
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


def project_edges(path: Path) -> set[Path]:
    """Project files (``pipeline/``) that importing ``path`` executes directly, parents' __init__ included."""
    out: set[Path] = set()
    for name in imported_names(path):
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
    return {f: project_edges(f) for f in LIBRARY}


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
    bad = []
    for f in LIBRARY:
        rel = f.relative_to(PKG)
        if rel.parts[0] == "demo" or rel.name == "cli.py":
            continue
        for name in imported_names(f):
            if name == "pipeline.cli" or name == "pipeline.demo" or name.startswith("pipeline.demo."):
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
        # pipeline.hashing: the one file checksum, standard library only
        assert all(
            n.startswith(("pipeline.cache", "pipeline.errors", "pipeline.hashing")) or n == "pipeline"
            for n in own
        ), f"{f.name}: {sorted(own)}"


# ---- dvc.yaml deps --------------------------------------------------------------------------------


def _stages() -> list[tuple[str, dict]]:
    out = []
    for dvc_file in (ROOT / "dvc.yaml", ROOT / "stages" / "demo" / "dvc.yaml"):
        doc = yaml.safe_load(dvc_file.read_text())
        for name, stage in doc["stages"].items():
            body = stage.get("do", stage)
            wdir = (dvc_file.parent / stage.get("wdir", ".")).resolve()
            out.append((f"{dvc_file.relative_to(ROOT)}:{name}", {**body, "_wdir": wdir}))
    return out


def _script(cmd: str) -> str:
    words = shlex.split(cmd)
    scripts = [w for w in words if w.endswith(".py")]
    assert len(scripts) == 1, f"expected one python script in {cmd!r}"
    return scripts[0]


def _code_deps(stage: dict) -> set[str]:
    found: set[str] = set()
    for dep in stage.get("deps", []):
        p = (stage["_wdir"] / dep).resolve()
        rel = p.relative_to(ROOT)
        if rel.parts[0] not in ("pipeline", "stages"):
            continue
        if p.is_dir():
            found.update(str(f.relative_to(ROOT)) for f in p.rglob("*.py") if "__pycache__" not in f.parts)
        else:
            found.add(str(rel))
    return found


def _significant(f: Path) -> bool:
    """Package ``__init__`` files hold no code (``test_package_inits_hold_no_code``): left out of deps."""
    return f.name != "__init__.py"


def expected_code_deps(script: Path) -> set[str]:
    return {str(f.relative_to(ROOT)) for f in closure(script) if _significant(f)}


@pytest.mark.parametrize("name,stage", _stages(), ids=[n for n, _ in _stages()])
def test_dvc_stage_deps_equal_import_closure(name, stage):
    script = (stage["_wdir"] / _script(stage["cmd"])).resolve()
    want = expected_code_deps(script)
    have = _code_deps(stage)
    missing, extra = sorted(want - have), sorted(have - want)
    assert not missing and not extra, (
        f"{name}: deps drift from the code the stage runs.\n  missing: {missing}\n  not imported: {extra}\n"
        f"  the stage's code deps should be: {sorted(want)}"
    )


def test_cache_stage_runs_no_training_code():
    stages = dict(_stages())
    deps = _code_deps(stages["dvc.yaml:cache"])
    assert not [d for d in deps if d.startswith("pipeline/train/")], sorted(deps)


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
    for f in [*LIBRARY, *ROOT.joinpath("stages").rglob("*.py")]:
        used |= _top_level(imported_names(f))
    unused = []
    for spec in deps:
        dist = re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower()
        mod = IMPORT_NAME.get(dist, dist.replace("-", "_"))
        if mod not in used and mod not in RUNTIME_ONLY:
            unused.append(dist)
    assert not unused, f"declared but never imported (use it or name why it is needed): {unused}"


# ---- regenerating the deps ------------------------------------------------------------------------


def rewrite_code_deps(dvc_file: Path) -> bool:
    """Rewrite ``dvc_file``'s code deps (``pipeline/`` and ``stages/`` entries) to each stage's import
    closure, in place, keeping every other line, comment and dep. Returns whether anything changed."""
    lines = dvc_file.read_text().splitlines(keepends=True)
    wanted = {
        name.split(":", 1)[1]: sorted(expected_code_deps((stage["_wdir"] / _script(stage["cmd"])).resolve()))
        for name, stage in _stages()
        if name.startswith(str(dvc_file.relative_to(ROOT)) + ":")
    }
    wdir = next(s["_wdir"] for n, s in _stages() if n.startswith(str(dvc_file.relative_to(ROOT)) + ":"))
    out: list[str] = []
    stage = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if indent == 2 and stripped.endswith(":") and not stripped.startswith("#"):
            stage = stripped[:-1]
        if stripped == "deps:" and stage in wanted:
            out.append(line)
            i += 1
            items: list[str] = []
            while i < len(lines) and lines[i].lstrip().startswith("- "):
                items.append(lines[i])
                i += 1
            prefix = items[0][: len(items[0]) - len(items[0].lstrip())] if items else " " * (indent + 2)
            rel = [str((ROOT / d).relative_to(wdir)) if wdir != ROOT else d for d in wanted[stage]]
            kept = [it for it in items if not it.strip()[2:].startswith(("pipeline/", "stages/"))]
            out.extend(kept + [f"{prefix}- {d}\n" for d in rel])
            continue
        out.append(line)
        i += 1
    text = "".join(out)
    changed = text != dvc_file.read_text()
    dvc_file.write_text(text)
    return changed


if __name__ == "__main__":
    # python -m tests.test_architecture --fix : regenerate every dvc.yaml's code deps from the imports.
    if sys.argv[1:] != ["--fix"]:
        raise SystemExit("usage: python -m tests.test_architecture --fix")
    for f in (ROOT / "dvc.yaml", ROOT / "stages" / "demo" / "dvc.yaml"):
        print(f"{f.relative_to(ROOT)}: {'rewritten' if rewrite_code_deps(f) else 'up to date'}")
