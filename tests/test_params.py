"""params.yaml -> resolved configs: each stage sees exactly the knobs it reads, and nothing else.

The DVC stages run on the files ``distill resolve`` writes, so which stages a knob re-runs is which
resolved files it changes; these tests change knobs and compare the files byte for byte.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main
from pipeline.errors import ConfigError
from pipeline.params import entries, overrides_from_params, run_names

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
GKD = {"student_gkd_cached", "student_gkd_written", "student_gkd_live"}
SFT = {"teacher", "student_sft", "student_sft_written"}
CACHES = {"cache", "cache_written"}


def _resolve(tmp_path: Path, name: str, **changes: dict[str, object]) -> dict[str, bytes]:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for group, values in changes.items():
        params[group].update(values)
    pfile = tmp_path / f"{name}.params.yaml"
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    out = tmp_path / name
    assert main(["resolve", "--params", str(pfile), "--out", str(out)]) == 0
    return {f.stem: f.read_bytes() for f in sorted(out.glob("*.yaml"))}


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # params.yaml's config paths are relative to the repository root


def test_a_student_knob_changes_only_the_gkd_students(tmp_path: Path, at_root: None) -> None:
    base = _resolve(tmp_path, "base")
    assert set(base) == GKD | SFT | CACHES
    other = 0.25 if PARAMS["student"]["beta"] != 0.25 else 0.75
    beta = _resolve(tmp_path, "beta", student={"beta": other})
    assert {n for n in base if base[n] != beta[n]} == GKD
    seed = _resolve(tmp_path, "seed", student={"seed": PARAMS["student"]["seed"] + 1})
    assert {n for n in base if base[n] != seed[n]} == (GKD | SFT) - {"teacher"}


def test_a_cache_knob_changes_the_caches_and_the_students_that_read_them(
    tmp_path: Path, at_root: None
) -> None:
    base = _resolve(tmp_path, "base")
    top_k = _resolve(tmp_path, "top_k", cache={"top_k": PARAMS["cache"]["top_k"] * 2})
    assert {n for n in base if base[n] != top_k[n]} == CACHES | GKD


def test_resolved_config_loads_to_the_config_plus_its_knobs(tmp_path: Path, at_root: None) -> None:
    from pipeline.config import load_config

    _resolve(tmp_path, "base")
    for entry in entries(ROOT / "params.yaml", "runs"):
        chain = load_config(entry.config)
        direct = load_config(
            entry.config, overrides_from_params(ROOT / "params.yaml", entry.params, chain.rlhf is not None)
        )
        resolved = load_config(tmp_path / "base" / f"{entry.name}.yaml")
        assert resolved.train == direct.train and resolved.rlhf == direct.rlhf, entry.name
        assert resolved.custom == direct.custom and resolved.data == direct.data, entry.name


def test_every_run_and_cache_writes_where_its_dvc_stage_says() -> None:
    from dvc.repo import Repo

    from pipeline.config import load_config

    with Repo(str(ROOT)) as repo:
        outs = {s.addressing: [o.def_path for o in s.outs] for s in repo.index.stages}
    for entry in entries(ROOT / "params.yaml", "runs"):
        assert outs[f"train@{entry.name}"] == [load_config(ROOT / entry.config).train.output_dir], entry
        assert f"evaluate@{entry.name}" in outs, entry
    for entry in entries(ROOT / "params.yaml", "caches"):
        assert outs[f"cache@{entry.name}"] == [load_config(ROOT / entry.config).custom.teacher_cache], entry


def test_runs_are_listed_in_the_comparisons_order() -> None:
    assert run_names(ROOT / "params.yaml") == list(PARAMS["runs"])
    assert run_names(ROOT / "params.yaml")[0] == "teacher"


@pytest.mark.parametrize(
    "section, spec, needle",
    [
        ("runs", {"x": {"params": ["student"]}}, "runs.x"),
        ("runs", {"x": {"config": "c.yaml", "params": ["students"]}}, "runs.x.params"),
        ("caches", [], "'caches'"),
    ],
    ids=["no-config", "unknown-group", "not-a-mapping"],
)
def test_bad_entry_is_an_error_naming_the_key(
    tmp_path: Path, section: str, spec: object, needle: str
) -> None:
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump({section: spec}))
    with pytest.raises(ConfigError, match=re.escape(needle)) as err:
        entries(pfile, section)
    assert str(pfile) in str(err.value)


def test_unknown_knob_is_an_error_naming_the_key(tmp_path: Path) -> None:
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump({"student": {"betta": 0.1}}))
    with pytest.raises(ConfigError, match=r"student\.betta"):
        overrides_from_params(pfile, ["student"])


# ------------------------------------------------------------------ bad params files: one-line errors


def _resolve_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], params: object = None, raw: bytes | None = None
) -> tuple[str, Path]:
    """``distill resolve`` on a params file (``params`` dumped, or the bytes ``raw``): its one-line error
    and the ``--out`` it was given (which must then hold nothing)."""
    pfile = tmp_path / "bad.params.yaml"
    pfile.write_bytes(raw if raw is not None else yaml.safe_dump(params, sort_keys=False).encode())
    out = tmp_path / "nested" / "out"
    assert main(["resolve", "--params", str(pfile), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ConfigError: "), err
    assert str(pfile) in err, err
    assert not any(tmp_path.rglob("*.yaml")) or sorted(tmp_path.rglob("*.yaml")) == [pfile]
    return err, out


def _params(**changes: object) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(changes)
    return params


@pytest.mark.parametrize(
    "raw, phrase",
    [
        (b"runs: [unclosed\n", "invalid YAML: line 2, column 1"),
        (b"runs: {a: 1}\n\xff\xfe\n", "not UTF-8 text"),
        (b"\x00\x01binary", "invalid YAML"),
    ],
    ids=["not-yaml", "not-utf8", "binary"],
)
def test_unreadable_params_file_is_one_line(tmp_path, capsys, raw: bytes, phrase: str) -> None:
    err, _ = _resolve_error(tmp_path, capsys, raw=raw)
    assert phrase in err


def test_a_knob_group_that_is_a_list_is_one_line(tmp_path, capsys, at_root) -> None:
    err, _ = _resolve_error(tmp_path, capsys, _params(student=[0.1, 0.2]))
    assert "key 'student': expected a mapping of knob -> value, got a list" in err


def test_an_error_in_a_late_entry_writes_no_file(tmp_path, capsys, at_root) -> None:
    params = _params()
    last = list(params["runs"])[-1]
    params["runs"][last]["config"] = "configs/demo/missing.yaml"  # every earlier entry is fine
    err, out = _resolve_error(tmp_path, capsys, params)
    assert "missing.yaml" in err and not out.exists()


@pytest.mark.parametrize("key", ["rows", "init", "targets"])
def test_a_run_without_a_key_dvc_reads_is_refused(tmp_path, capsys, at_root, key: str) -> None:
    params = _params()
    del params["runs"]["student_sft"][key]
    err, _ = _resolve_error(tmp_path, capsys, params)
    assert f"key 'runs.student_sft.{key}': missing" in err


def test_rows_that_do_not_hold_the_dataset_are_refused(tmp_path, capsys, at_root) -> None:
    params = _params()
    params["runs"]["student_sft"]["rows"] = "data/prepared/nothere.jsonl"
    err, _ = _resolve_error(tmp_path, capsys, params)
    assert "key 'runs.student_sft.rows': 'data/prepared/nothere.jsonl' does not hold" in err
    assert "data/prepared/labelled.jsonl" in err


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".hidden", ""])
def test_a_name_that_is_not_one_path_component_is_refused(tmp_path, capsys, at_root, name: str) -> None:
    params = _params()
    params["runs"] = {name: params["runs"]["student_sft"], **params["runs"]}
    err, _ = _resolve_error(tmp_path, capsys, params)
    assert f"key 'runs.{name}': the name must be letters, digits" in err
    assert not (tmp_path / "escaped.yaml").exists()  # --out/../../escaped.yaml
