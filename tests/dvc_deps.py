"""Write every ``dvc.yaml`` stage's code deps from the code its command runs.

    python -m tests.dvc_deps          # rewrite dvc.yaml and stages/demo/dvc.yaml in place
    python -m tests.dvc_deps --check  # exit 1 and list the stages whose deps would change

The deps are what ``tests/test_architecture.py::test_dvc_stage_code_deps_cover_the_code_it_runs``
computes (the command's module and the library it imports, transitively): a sub-package directory
already declared stays while any of its files runs; every other file the command runs is listed; a
``pipeline/`` entry the command no longer runs goes. Entries outside ``pipeline/`` (data, configs)
and the files' comments and layout are kept (ruamel's round trip).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from tests.test_architecture import PKG, ROOT, STAGES, stage_code

DVC_FILES = (ROOT / "dvc.yaml", ROOT / "stages" / "demo" / "dvc.yaml")


def _runs_by_stage() -> dict[tuple[Path, str], set[Path]]:
    """(dvc file, stage name as written, ``foreach`` groups by their name) -> library files it runs."""
    out: dict[tuple[Path, str], set[Path]] = {}
    for name, stage in STAGES:
        key = (Path(stage.dvcfile.path).resolve(), name.rsplit(":", 1)[-1].split("@")[0])
        out.setdefault(key, set()).update(stage_code(stage.cmd))
    return out


def code_deps(declared: list[str], runs: set[Path], wdir: Path) -> list[str]:
    """The ``pipeline/`` deps a stage should declare (paths relative to ``wdir``), sorted."""
    rel = {f: f.relative_to(wdir).as_posix() for f in runs}
    dirs = [d for d in declared if (wdir / d).is_dir() and any(f.is_relative_to(wdir / d) for f in runs)]
    files = {r for f, r in rel.items() if not any(f.is_relative_to(wdir / d) for d in dirs)}
    return sorted({*dirs, *files})


def rewrite(path: Path, runs: dict[tuple[Path, str], set[Path]]) -> list[str]:
    """Rewrite ``path``'s stages' code deps in place (those lines only: the rest of the file stays
    byte for byte); the names of the stages that changed."""
    doc = YAML().load(path.read_text())  # round-trip nodes: each list item knows its line
    lines = path.read_text().splitlines(keepends=True)
    edits: list[tuple[int, int, list[str]]] = []  # (first line, end line, new lines)
    changed = []
    for name, stage in doc["stages"].items():
        body: Any = stage.get("do", stage)
        wdir = (path.parent / stage.get("wdir", ".")).resolve()
        deps = body.get("deps")
        if deps is None or (path.resolve(), name) not in runs:
            continue
        mine = [
            i for i, d in enumerate(deps) if isinstance(d, str) and (wdir / d).resolve().is_relative_to(PKG)
        ]
        own = [deps[i] for i in mine]
        want = code_deps(own, runs[(path.resolve(), name)], wdir)
        if not mine or own == want:
            continue
        changed.append(name)
        first, last = deps.lc.item(mine[0])[0], deps.lc.item(mine[-1])[0]
        if mine != list(range(mine[0], mine[-1] + 1)):
            raise SystemExit(f"{path}: {name}: its pipeline/ deps are not one run of lines; group them first")
        indent = lines[first][: lines[first].index("-")]
        edits.append((first, last + 1, [f"{indent}- {d}\n" for d in want]))
    for first, end, new in sorted(edits, reverse=True):
        lines[first:end] = new
    if changed:
        path.write_text("".join(lines))
    return changed


def main(argv: list[str]) -> int:
    runs = _runs_by_stage()
    if "--check" in argv:
        stale = []
        for path in DVC_FILES:
            text = path.read_text()
            changed = rewrite(path, runs)
            path.write_text(text)
            stale += [f"{path.relative_to(ROOT)}:{n}" for n in changed]
        print("\n".join(stale) or "every stage's code deps are current")
        return 1 if stale else 0
    for path in DVC_FILES:
        for name in rewrite(path, runs):
            print(f"{path.relative_to(ROOT)}: {name}: code deps rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
