"""The CLI: help that imports nothing heavy, one-line errors with a non-zero exit, in-process where possible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main


def test_help_imports_nothing_heavy() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from pipeline.cli import main; "
            "import contextlib, io\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: main(['--help'])\n"
            "    except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'swift') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--config", "configs/missing.yaml"],
        ["cache", "--config", "configs/missing.yaml"],
        ["evaluate", "--config", "configs/missing.yaml", "--out", "unused.json"],
        ["export-written", "--config", "configs/missing.yaml", "--out", "unused.jsonl"],
        ["resolve", "--params", "missing_params.yaml", "--out", "unused"],
    ],
    ids=lambda argv: argv[0],
)
def test_missing_input_is_one_line_naming_the_file(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ConfigError: "), lines
    assert argv[2] in lines[0]


def test_stage_marker_records_command_and_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # params.yaml's config paths are relative
    markers = tmp_path / "markers.jsonl"
    monkeypatch.setenv("DISTILL_STAGE_MARKERS", str(markers))
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2  # a failure leaves none
    assert not markers.exists()
    assert main(["resolve", "--out", str(tmp_path / "configs")]) == 0
    assert [json.loads(x)["stage"] for x in markers.read_text().splitlines()] == ["resolve"]


@pytest.mark.parametrize(
    "files, needle",
    [
        (
            {"c.yaml": "model: {model: m, model_type: qwen2_5_vl, template: qwen2_5_vl}\nbogus_key: 1\n"},
            "bogus_key",
        ),
        ({"c.yaml": "inherit: d.yaml\n", "d.yaml": "inherit: c.yaml\n"}, "c.yaml"),
        ({"c.yaml": "inherit: missing_parent.yaml\n"}, "missing_parent.yaml"),
        (
            {
                "c.yaml": "model: {model: m, model_type: qwen2_5_vl, template: qwen2_5_vl}\n"
                "data: {dataset: [a.jsonl], max_length: lots}\n"
            },
            "max_length",
        ),
    ],
    ids=["unknown-key", "cycle", "missing-parent", "wrong-type"],
)
def test_bad_config_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str], needle: str
) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    code = main(["train", "--config", str(tmp_path / "c.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ConfigError")
    assert needle in err


def test_bad_set_override_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--config", str(tmp_path / "none.yaml"), "--set", "novalue"])
    assert code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def _missing_model_config(tmp_path: Path) -> Path:
    """A cached-GKD config whose student and teacher paths look local and do not exist."""
    (tmp_path / "train.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."}]}\n'
    )
    cfg = {
        "model": {"model": "runs/demo/nope-student", "model_type": "qwen2_5_vl", "template": "qwen2_5_vl"},
        "data": {"dataset": [str(tmp_path / "train.jsonl")], "max_length": 64},
        "train": {"output_dir": str(tmp_path / "run"), "learning_rate": 1e-4, "num_train_epochs": 1},
        "rlhf": {"rlhf_type": "gkd", "teacher_model": "runs/demo/nope", "lmbda": 0.0},
        "custom": {"trainer_variant": "gkd_cached", "teacher_cache": str(tmp_path / "cache")},
    }
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize(
    ("argv", "key", "path"),
    [
        (["cache"], "rlhf.teacher_model", "runs/demo/nope"),
        (["check"], "rlhf.teacher_model", "runs/demo/nope"),
        (["train"], "model.model", "runs/demo/nope-student"),
    ],
    ids=["cache", "check", "train"],
)
def test_a_missing_local_model_is_a_config_error_never_a_hub_download(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_hub: list[str],
    argv: list[str],
    key: str,
    path: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _missing_model_config(tmp_path)
    code = main([*argv, "--config", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after ms-swift's INFO log
    assert code == 2
    assert err == (
        f"error: ConfigError: {cfg}: {key}: model directory {path!r} does not exist (a local path: "
        "looked for here, not on the model hub; a hub id is ORG/NAME)"
    )
    assert no_hub == []  # a hub download would retry for ~40 s offline before failing


def test_inspect_with_a_missing_local_tokenizer_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.cache.test_export import _cache

    monkeypatch.chdir(tmp_path)
    cache = _cache(tmp_path / "c")
    assert main(["inspect", str(cache), "--tokenizer", "models/tok/nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after ms-swift's INFO log
    assert err.startswith("error: ConfigError: --tokenizer: model directory 'models/tok/nope' does not exist")


def test_output_dir_that_is_a_file_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _missing_model_config(tmp_path)
    (tmp_path / "taken").write_text("")
    assert main(["train", "--config", str(cfg), "--set", f"train.output_dir={tmp_path / 'taken'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after ms-swift's INFO log
    assert err == (
        f"error: ConfigError: {cfg}: train.output_dir: '{tmp_path / 'taken'}' is not a directory "
        f"(File exists: {tmp_path / 'taken'}); choose another output_dir"
    )


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every hub download ms-swift or transformers would start records itself and fails."""
    pytest.importorskip("swift.hub")
    import transformers.utils.hub as hf_hub
    from swift.hub.hub import HFHub, MSHub

    calls: list[str] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(repr(args[:2]))
        raise AssertionError("a hub download was attempted")

    for hub in (HFHub, MSHub):
        monkeypatch.setattr(hub, "download_model", classmethod(refuse))
    monkeypatch.setattr(hf_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(hf_hub, "snapshot_download", refuse)
    return calls


@pytest.mark.parametrize(
    ("argv", "key"),
    [(["cache"], "rlhf.teacher_model"), (["check"], "rlhf.teacher_model"), (["train"], "model.model")],
    ids=["cache", "check", "train"],
)
def test_a_hub_id_without_a_slash_is_refused_before_any_hub_call(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_hub: list[str],
    argv: list[str],
    key: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = _missing_model_config(tmp_path)
    sets = ["--set", "model.model=qwen-vl", "--set", "rlhf.teacher_model=qwen-vl"]
    assert main([*argv, "--config", str(cfg), *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after ms-swift's INFO log
    assert err == (
        f"error: ConfigError: {cfg}: {key}: 'qwen-vl' is neither a local directory nor a hub id "
        "(ORG/NAME); give the model's directory"
    )
    assert no_hub == []


def test_inspect_with_a_tokenizer_id_without_a_slash_makes_no_hub_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_hub: list[str]
) -> None:
    from tests.cache.test_export import _cache

    monkeypatch.chdir(tmp_path)
    cache = _cache(tmp_path / "c")
    assert main(["inspect", str(cache), "--tokenizer", "qwen-vl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "error: ConfigError: --tokenizer: 'qwen-vl' is neither a local directory nor a hub id"
    )
    assert no_hub == []
