"""``distill prepare`` and ``distill resolve`` write every output or none.

Each writes several files (one per split and the report; one config per run and cache). They are
written to temporary names and renamed only once all are complete, so a split that fails or a full
disk leaves the output folder as it was, says so in one line naming the file, and the rerun completes.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

import pipeline.commands.resolve as resolve_command
import pipeline.prepare as prepare_module
from pipeline.cli import main
from pipeline.params import every_entry

ROOT = Path(__file__).resolve().parents[1]


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _jsonl(path: Path, *answers: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {"messages": [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": a}]}
        for a in answers
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[list[Path], Path, dict[str, bytes]]:
    """Two splits prepared once into ``out``, then their inputs edited: (inputs, out, out's files)."""
    inputs = [
        _jsonl(tmp_path / "in" / "train.jsonl", "one", "two"),
        _jsonl(tmp_path / "in" / "val.jsonl", "three"),
    ]
    out = tmp_path / "out"
    assert main(["prepare", *map(str, inputs), "--out", str(out)]) == 0
    _jsonl(inputs[0], "one", "two", "four")
    _jsonl(inputs[1], "three", "five")
    return inputs, out, _files(out)


def test_a_later_split_that_fails_leaves_the_earlier_splits_as_they_were(
    prepared: tuple[list[Path], Path, dict[str, bytes]], capsys: pytest.CaptureFixture[str]
) -> None:
    inputs, out, before = prepared
    inputs[1].write_text("not json\n")  # the second split has no usable row
    err = _one_line(capsys, ["prepare", *map(str, inputs), "--out", str(out)])
    assert err.startswith("error: DataError: ") and "val.jsonl" in err
    assert _files(out) == before  # train.jsonl not rewritten, the report not either, no temporary


@pytest.mark.parametrize("point", ["second split", "report"])
def test_a_full_disk_in_prepare_is_one_line_and_the_rerun_completes(
    prepared: tuple[list[Path], Path, dict[str, bytes]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    point: str,
) -> None:
    inputs, out, before = prepared
    with monkeypatch.context() as full:
        if point == "second split":
            write_rows, calls = prepare_module.write_rows, []

            def half_then_full(rows: list[Any], path: Path) -> None:
                calls.append(path)
                write_rows(rows[:1], path)  # some bytes reach the file, then the disk is full
                if len(calls) == 2:
                    raise _enospc()
                write_rows(rows, path)

            full.setattr(prepare_module, "write_rows", half_then_full)
            failing = out / "val.jsonl"
        else:
            atomic_write = prepare_module.atomic_write

            @contextmanager
            def full_report(target: Path, *args: Any, **kwargs: Any) -> Iterator[Any]:
                with atomic_write(target, *args, **kwargs) as fh:
                    fh.write("{")  # a torn report, then the disk is full
                    raise _enospc()
                yield fh

            full.setattr(prepare_module, "atomic_write", full_report, raising=False)
            failing = out / "prepare_report.json"
        err = _one_line(capsys, ["prepare", *map(str, inputs), "--out", str(out)])
    assert err.startswith(f"error: DiskFullError: {failing}: no space left on device"), err
    assert err.endswith("free space and run the same command again"), err
    assert _files(out) == before
    assert main(["prepare", *map(str, inputs), "--out", str(out)]) == 0
    clean = out.parent / "clean"
    assert main(["prepare", *map(str, inputs), "--out", str(clean)]) == 0
    assert _files(out).keys() == _files(clean).keys()
    assert (out / "train.jsonl").read_bytes() == (clean / "train.jsonl").read_bytes()
    report = json.loads((out / "prepare_report.json").read_text())
    assert (report["train"]["kept"], report["val"]["kept"]) == (3, 2)


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # params.yaml's config paths are relative to the repository root


def test_a_full_disk_in_resolve_is_one_line_and_leaves_out_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, at_root: None
) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / "resolved"
    assert main(["resolve", "--params", str(pfile), "--out", str(out)]) == 0
    params["student"]["beta"] = 0.25 if params["student"]["beta"] != 0.25 else 0.75
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    before = _files(out)
    dump, calls = resolve_command.dump_config, []

    def full_at_the_third(config: dict[str, Any], path: Path) -> None:
        calls.append(path)
        dump(config, path)
        if len(calls) == 3:
            raise _enospc()

    with monkeypatch.context() as full:
        full.setattr(resolve_command, "dump_config", full_at_the_third)
        err = _one_line(capsys, ["resolve", "--params", str(pfile), "--out", str(out)])
    third = out / f"{every_entry(pfile)[2].name}.yaml"
    assert err.startswith(f"error: DiskFullError: {third}: no space left on device"), err
    assert err.endswith("was left as it was; free space and run the same command again"), err
    assert _files(out) == before  # no config new, none stale, no temporary
    assert main(["resolve", "--params", str(pfile), "--out", str(out)]) == 0
    after = _files(out)
    assert after.keys() == before.keys() and after != before


def test_any_failure_while_resolve_writes_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at_root: None
) -> None:
    pfile = tmp_path / "params.yaml"
    pfile.write_text((ROOT / "params.yaml").read_text())
    out = tmp_path / "resolved"
    dump, calls = resolve_command.dump_config, []

    def fails_at_the_second(config: dict[str, Any], path: Path) -> None:
        calls.append(path)
        dump(config, path)
        if len(calls) == 2:
            raise RuntimeError("a bug in the writer")

    monkeypatch.setattr(resolve_command, "dump_config", fails_at_the_second)
    with pytest.raises(RuntimeError, match="a bug in the writer"):
        main(["resolve", "--params", str(pfile), "--out", str(out)])
    assert not out.exists() or _files(out) == {}
