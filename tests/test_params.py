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
