"""The CLI: fast help, one-line errors with a non-zero exit, in-process where possible."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main


def test_help_is_fast_and_imports_nothing_heavy() -> None:
    t0 = time.perf_counter()
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
    assert time.perf_counter() - t0 < 10


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
