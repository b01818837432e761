"""Config loading: every shipped YAML, inheritance, overrides, and each way a config can be wrong.

Everything here is fast and imports no ms-swift, except the ``TestMsSwiftContract`` class at the
end, which checks our names and choice lists against the installed ms-swift and builds real
argument objects from the demo configs (model dirs faked with a bare config.json).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    DistillConfig,
    apply_vision_env,
    config_chain,
    config_reference,
    load_config,
    load_yaml,
    resolve_dict,
    vision_env,
)
from pipeline.config_schema import SECTIONS, SWIFT_NAMES_SET_BY_CONFIG
from pipeline.errors import ConfigError
from pipeline.train.swift_args import swift_kwargs

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").rglob("*.yaml"))

MINIMAL = """\
model: {model: /models/student, model_type: qwen2_5_vl, template: qwen2_5_vl}
data: {dataset: [train.jsonl]}
train: {learning_rate: 1.0e-4, num_train_epochs: 1}
"""
GKD = """\
rlhf: {rlhf_type: gkd, teacher_model: /models/teacher, beta: 0.5, lmbda: 0.0}
custom: {trainer_variant: gkd_cached, teacher_cache: cache/t}
"""


@pytest.fixture
def write(tmp_path: Path):
    """``write("a.yaml", text)`` -> path of a config file under tmp_path."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return _write


def _error(path: Path, overrides: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# ------------------------------------------------------------------------------ shipped configs


def test_configs_are_shipped():
    names = {str(p.relative_to(REPO / "configs")) for p in SHIPPED}
    assert {
        "stage_2_llm_lora.yaml",
        "stage_3.yaml",
        "stage_2_llm_lora_gkd.yaml",
        "stage_3_gkd.yaml",
        "demo/teacher_sft.yaml",
        "demo/student_sft.yaml",
        "demo/student_gkd_cached.yaml",
        "demo/student_gkd_live.yaml",
    } <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_config_loads_and_says_how_to_run_it(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(REPO)
    rel = path.relative_to(REPO)
    cfg = load_config(rel)
    assert isinstance(cfg, DistillConfig)
    assert cfg.source_files[-1] == str(rel)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# distill ") and f"--config {rel}" in first, first
    # Dumping the resolved mapping gives a standalone config that loads to the same thing.
    standalone = tmp_path / "resolved.yaml"
    standalone.write_text(yaml.safe_dump(resolve_dict(rel)))
    flat = load_config(standalone)
    assert dataclasses.replace(flat, source_files=[]) == dataclasses.replace(cfg, source_files=[])


def test_real_model_configs_load_without_their_model_dirs():
    for name in ("stage_2_llm_lora.yaml", "stage_3.yaml", "stage_2_llm_lora_gkd.yaml", "stage_3_gkd.yaml"):
        cfg = load_config(REPO / "configs" / name)
        if not os.path.exists(cfg.model.model):  # the point of this test: they need not exist
            assert cfg.model.model.startswith("/models/")


def test_stage_configs_have_the_intended_shape():
    stage2 = load_config(REPO / "configs/stage_2_llm_lora.yaml")
    assert (stage2.train.tuner_type, stage2.train.freeze_vit, stage2.train.freeze_aligner) == (
        "lora",
        True,
        True,
    )
    assert stage2.rlhf is None and stage2.custom.trainer_variant == "sft"
    stage3 = load_config(REPO / "configs/stage_3.yaml")
    assert stage3.train.tuner_type == "full" and not stage3.train.freeze_aligner and stage3.train.freeze_vit
    assert stage3.data == stage2.data  # one encoding, so one teacher cache serves both stages
    for name, base in (("stage_2_llm_lora_gkd.yaml", stage2), ("stage_3_gkd.yaml", stage3)):
        gkd = load_config(REPO / "configs" / name)
        assert gkd.rlhf is not None and gkd.rlhf.rlhf_type == "gkd" and not gkd.rlhf.seq_kd
        assert gkd.custom.trainer_variant == "gkd_cached" and gkd.custom.teacher_cache
        assert gkd.model == base.model and gkd.data == base.data
    live = load_config(REPO / "configs/demo/student_gkd_live.yaml")
    cached = load_config(REPO / "configs/demo/student_gkd_cached.yaml")
    assert live.custom.trainer_variant == "gkd_monitor" and live.rlhf == cached.rlhf


def test_config_chain_lists_parents_first():
    chain = config_chain(REPO / "configs/stage_3_gkd.yaml")
    assert [p.name for p in chain] == ["stage_2_llm_lora.yaml", "stage_3.yaml", "stage_3_gkd.yaml"]
    assert all(p.is_file() for p in chain)


def test_deepspeed_configs_are_valid_json():
    for stage in (2, 3):
        cfg = json.loads((REPO / f"configs/deepspeed/zero{stage}.json").read_text())
        assert cfg["zero_optimization"]["stage"] == stage
        assert cfg["train_micro_batch_size_per_gpu"] == "auto"


def test_logprob_encodings_match_the_cache_format():
    from pipeline.cache import format as cache_format
    from pipeline.config_schema import LOGPROB_ENCODINGS

    assert LOGPROB_ENCODINGS == cache_format.LOGPROB_ENCODINGS


def test_import_is_cheap():
    heavy = "('torch', 'swift', 'transformers')"
    code = f"import sys, pipeline.config; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_field_is_documented():
    for cls in [*SECTIONS.values(), DistillConfig]:
        for f in dataclasses.fields(cls):
            assert len(f.metadata.get("help", "")) > 10, f"{cls.__name__}.{f.name}"
    ref = config_reference()
    assert "| `loss_temperature` | `1.0` |" in ref and "| `learning_rate` | `required` |" in ref


# ----------------------------------------------------------------------- inheritance, overrides


def test_inheritance_merges_mappings_and_replaces_lists(write):
    write(
        "base/parent.yaml",
        MINIMAL.replace(
            "num_train_epochs: 1",
            "num_train_epochs: 1, report_to: [tensorboard, wandb], extra: {vit_lr: 1.0e-5}",
        ),
    )
    child = write(
        "child/child.yaml",
        """\
    inherit: ../base/parent.yaml
    train:
      report_to: [none]
      extra: {save_only_model: true}
    data:
      max_length: 1024
    """,
    )
    cfg = load_config(child)
    assert cfg.train.report_to == ["none"]  # lists replace
    assert cfg.train.extra == {"vit_lr": 1e-5, "save_only_model": True}  # mappings merge
    assert (
        cfg.train.learning_rate == 1e-4
        and cfg.data.dataset == ["train.jsonl"]
        and cfg.data.max_length == 1024
    )
    assert [Path(p).name for p in cfg.source_files] == ["parent.yaml", "child.yaml"]


def test_null_drops_an_inherited_block(write):
    write("gkd.yaml", MINIMAL + GKD)
    child = write(
        "sft.yaml", "inherit: gkd.yaml\nrlhf: null\ncustom: {trainer_variant: sft, teacher_cache: null}\n"
    )
    cfg = load_config(child)
    assert cfg.rlhf is None and cfg.custom.teacher_cache is None


def test_overrides_apply_after_inheritance_and_are_checked(write):
    path = write("gkd.yaml", MINIMAL + GKD)
    cfg = load_config(path, {"rlhf.beta": 0.1, "train.extra": {"vit_lr": 2e-6}, "data.max_pixels": 200704})
    assert cfg.rlhf is not None and cfg.rlhf.beta == 0.1
    assert cfg.train.extra == {"vit_lr": 2e-6} and cfg.data.max_pixels == 200704
    assert "overrides: rlhf.beta: must be in [0, 1]" in _error(path, {"rlhf.beta": 2})
    assert "overrides: rlhf.bta: unknown key; did you mean rlhf.beta?" in _error(path, {"rlhf.bta": 0.1})
    assert "overrides: train.learning_rate: expected float, got str 'fast'" in _error(
        path, {"train.learning_rate": "fast"}
    )
    assert "overrides: inherit" in _error(path, {"inherit": "x.yaml"})
    assert "overrides: train.learning_rate.x: train.learning_rate is a value" in _error(
        path, {"train.learning_rate.x": 1}
    )


def test_override_creating_a_block_is_checked_like_a_file(write):
    path = write("sft.yaml", MINIMAL)
    message = _error(path, {"rlhf.beta": 0.1})
    assert message.startswith("overrides: rlhf: an rlhf: block needs a GKD trainer")


def test_resolve_dict_has_no_inherit(write):
    write("p.yaml", MINIMAL)
    child = write("c.yaml", "inherit: p.yaml\ntrain: {seed: 7}\n")
    raw = resolve_dict(child, {"train.logging_steps": 3})
    assert "inherit" not in raw and raw["train"]["seed"] == 7 and raw["train"]["logging_steps"] == 3


def test_float_fields_accept_pyyaml_exponent_strings(write):
    # plain yaml.safe_load (e.g. of a DVC params.yaml) returns "1e-4" as a string
    cfg = load_config(write("c.yaml", MINIMAL), {"train.learning_rate": "1e-4"})
    assert cfg.train.learning_rate == 1e-4
    assert "expected int" in _error(write("d.yaml", MINIMAL), {"train.max_steps": "1e3"})


def test_yaml_reads_exponent_floats_and_refuses_duplicate_keys(write):
    assert load_yaml(write("f.yaml", "a: 1e-4\nb: 5\nc: 1.5\nd: '1e-4'\n")) == {
        "a": 1e-4,
        "b": 5,
        "c": 1.5,
        "d": "1e-4",
    }
    path = write("dup.yaml", MINIMAL + "train: {learning_rate: 1.0}\n")
    assert "dup.yaml: invalid YAML" in _error(path) and "duplicate key 'train'" in _error(path)


# ------------------------------------------------------------------------------------ bad configs

BAD_FILE_CASES = {
    # name: (extra YAML appended to MINIMAL, the dotted key the message must name, a phrase)
    "unknown key": (
        "data: {dataset: [a.jsonl], max_lenght: 10}",
        "data.max_lenght",
        "did you mean data.max_length",
    ),
    "old tuner name": (
        "train: {learning_rate: 1.0, num_train_epochs: 1, train_type: lora}",
        "train.train_type",
        "train.extra",
    ),
    "unknown section": ("trainer: {}", "trainer", "unknown section"),
    "wrong type": (
        "train: {learning_rate: fast, num_train_epochs: 1}",
        "train.learning_rate",
        "expected float",
    ),
    "quoted number": (
        "train: {learning_rate: '0.5', num_train_epochs: 1}",
        "train.learning_rate",
        "unquoted",
    ),
    "bool for int": ("data: {dataset: [a.jsonl], max_length: true}", "data.max_length", "expected int"),
    "string for list": ("data: {dataset: a.jsonl}", "data.dataset", "must be a list"),
    "list item type": ("data: {dataset: [a.jsonl, 3]}", "data.dataset[1]", "expected str"),
    "section not a mapping": ("custom: gkd", "custom", "must be a mapping"),
    "truncation split": (
        "data: {dataset: [a.jsonl], truncation_strategy: split}",
        "data.truncation_strategy",
        "delete, left, right",
    ),
    "dtype": (
        "model: {model: m, model_type: t, template: t, torch_dtype: fp32}",
        "model.torch_dtype",
        "float32",
    ),
    "min above max": (
        "data: {dataset: [a.jsonl], max_pixels: 100, min_pixels: 200}",
        "data.min_pixels",
        "lower it",
    ),
    "system path": ("data: {dataset: [a.jsonl], system: prompt.txt}", "data.system", "text itself"),
    "nothing trains": (
        "train: {learning_rate: 1.0, num_train_epochs: 1, tuner_type: full, freeze_llm: true}",
        "train.freeze_llm",
        "nothing is trained",
    ),
    "extra owned key": (
        "train: {learning_rate: 1.0, num_train_epochs: 1, extra: {learning_rate: 2.0}}",
        "train.extra.learning_rate",
        "set train.learning_rate instead",
    ),
    "extra alias": (
        "train: {learning_rate: 1.0, num_train_epochs: 1, extra: {max_new_tokens: 9}}",
        "train.extra.max_new_tokens",
        "rlhf.max_completion_length",
    ),
    "extra pixels env": (
        "train: {learning_rate: 1.0, num_train_epochs: 1, extra: {model_kwargs: {MAX_PIXELS: 9}}}",
        "train.extra.model_kwargs",
        "data.max_pixels",
    ),
    "sft with rlhf": ("rlhf: {beta: 0.5}", "rlhf", "set custom.trainer_variant"),
    "gkd without rlhf": (
        "custom: {trainer_variant: gkd_cached, teacher_cache: c}",
        "custom.trainer_variant",
        "needs an rlhf: block",
    ),
    "monitor without teacher": (
        "rlhf: {beta: 0.5}\ncustom: {trainer_variant: gkd_monitor}",
        "rlhf.teacher_model",
        "gkd_monitor",
    ),
    "cached without cache": (
        "rlhf: {beta: 0.5}\ncustom: {trainer_variant: gkd_cached}",
        "custom.teacher_cache",
        "set custom.teacher_cache",
    ),
    "on-policy without teacher": (
        "rlhf: {lmbda: 0.3}\ncustom: {trainer_variant: gkd_cached, teacher_cache: c}",
        "rlhf.teacher_model",
        "set rlhf.lmbda to 0",
    ),
    "rlhf type": (
        "rlhf: {rlhf_type: dpo}\ncustom: {trainer_variant: gkd_cached, teacher_cache: c}",
        "rlhf.rlhf_type",
        "only runs `gkd`",
    ),
    "seq_kd": (
        "rlhf: {seq_kd: true}\ncustom: {trainer_variant: gkd_cached, teacher_cache: c}",
        "rlhf.seq_kd",
        "not supported",
    ),
    "beta range": (
        "rlhf: {beta: 1.5}\ncustom: {trainer_variant: gkd_cached, teacher_cache: c}",
        "rlhf.beta",
        "[0, 1]",
    ),
    "lmbda range": (
        "rlhf: {lmbda: -0.1}\ncustom: {trainer_variant: gkd_cached, teacher_cache: c}",
        "rlhf.lmbda",
        "[0, 1]",
    ),
    "sft_alpha": (
        "rlhf: {sft_alpha: -1}\ncustom: {trainer_variant: gkd_cached, teacher_cache: c}",
        "rlhf.sft_alpha",
        ">= 0",
    ),
    "sampling temperature": (
        "rlhf: {temperature: 0}\ncustom: {trainer_variant: gkd_cached, teacher_cache: c}",
        "rlhf.temperature",
        "> 0",
    ),
    "loss temperature": ("custom: {loss_temperature: 0.0}", "custom.loss_temperature", "> 0"),
    "top_k": ("custom: {top_k: 0}", "custom.top_k", "> 0"),
    "variant": ("custom: {trainer_variant: kd}", "custom.trainer_variant", "sft, gkd_monitor, gkd_cached"),
}


@pytest.mark.parametrize("case", list(BAD_FILE_CASES))
def test_bad_key_in_a_child_names_the_child_and_the_key(case: str, write):
    text, key, phrase = BAD_FILE_CASES[case]
    write("parent.yaml", MINIMAL)
    child = write("child.yaml", "inherit: parent.yaml\n" + text + "\n")
    message = _error(child)
    assert message.startswith(f"child.yaml: {key}:") or message.startswith(f"{child}: {key}:"), message
    assert phrase in message, message


def test_bad_key_in_a_parent_names_the_parent(write):
    write("parent.yaml", MINIMAL.replace("num_train_epochs: 1", "num_train_epochs: 1, lora_rnk: 8"))
    child = write("child.yaml", "inherit: parent.yaml\ntrain: {seed: 1}\n")
    assert "parent.yaml: train.lora_rnk: unknown key; did you mean train.lora_rank?" in _error(child)


def test_missing_required_key(write):
    path = write("c.yaml", MINIMAL.replace("learning_rate: 1.0e-4, ", ""))
    assert _error(path).startswith(
        f"{path}: train.learning_rate: required key is missing: Peak learning rate"
    )


def test_missing_required_section_names_the_chain(write):
    write("parent.yaml", "data: {dataset: [a.jsonl]}\ntrain: {learning_rate: 1.0, num_train_epochs: 1}\n")
    child = write("child.yaml", "inherit: parent.yaml\n")
    assert "child.yaml (or a parent): model: required section is missing" in _error(child)


@pytest.mark.parametrize(
    "files, start, phrase",
    [
        ({"a.yaml": "inherit: b.yaml\n", "b.yaml": "inherit: a.yaml\n"}, "a.yaml", "inheritance cycle"),
        ({"a.yaml": "inherit: a.yaml\n"}, "a.yaml", "inheritance cycle"),
        ({"a.yaml": "inherit: missing.yaml\n"}, "a.yaml", "parent file 'missing.yaml' not found"),
        ({"a.yaml": "inherit: [b.yaml]\n"}, "a.yaml", "inherit: must be the parent's path"),
        ({"a.yaml": "- model\n"}, "a.yaml", "top level must be a mapping"),
        ({"a.yaml": "model: [unclosed\n"}, "a.yaml", "invalid YAML"),
    ],
)
def test_broken_files(files: dict, start: str, phrase: str, write):
    paths = {name: write(name, text) for name, text in files.items()}
    message = _error(paths[start])
    assert phrase in message and ".yaml" in message, message


def test_cycle_names_every_file(write):
    write("a.yaml", "inherit: b.yaml\n")
    write("b.yaml", "inherit: c.yaml\n")
    c = write("c.yaml", "inherit: a.yaml\n")
    message = _error(c)
    assert "c.yaml" in message and "a.yaml" in message and "b.yaml" in message


def test_missing_file(tmp_path: Path):
    assert "nope.yaml: config file not found" in _error(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------ swift kwargs (pure)


def test_swift_kwargs_map_every_field(write):
    path = write("gkd.yaml", MINIMAL + GKD)
    cfg = load_config(
        path,
        {
            "train.extra": {"vit_lr": 1e-6, "model_kwargs": {"FPS": 2}},
            "data.max_pixels": 1003520,
            "data.min_pixels": 3136,
        },
    )
    kw = swift_kwargs(cfg, "rlhf")
    assert kw["rlhf_type"] == "gkd" and kw["temperature"] == 0.9 and kw["lmbda"] == 0.0
    assert kw["teacher_model"] is None  # offline cached GKD: ms-swift must not load the teacher
    assert swift_kwargs(load_config(path, {"rlhf.lmbda": 0.2}), "rlhf")["teacher_model"] == "/models/teacher"
    live = load_config(path, {"custom.trainer_variant": "gkd_monitor"})
    assert swift_kwargs(live, "rlhf")["teacher_model"] == "/models/teacher"
    assert kw["max_pixels"] == 1003520 and kw["model_kwargs"] == {"MIN_PIXELS": "3136", "FPS": 2}
    assert kw["bf16"] is True and kw["fp16"] is False and kw["add_version"] is False
    assert kw["loss_scale"] == "default" and kw["vit_lr"] == 1e-6
    sft = swift_kwargs(cfg)  # what training builds, for every variant
    assert "beta" not in sft and "teacher_model" not in sft
    owned = {k for k, v in SWIFT_NAMES_SET_BY_CONFIG.items() if " " not in v}
    assert owned - {"attn_impl", "system"} <= set(kw)
    with pytest.raises(ConfigError, match="kind must be"):
        swift_kwargs(cfg, "dpo")
    with pytest.raises(ConfigError, match="rlhf: block"):
        swift_kwargs(load_config(write("sft.yaml", MINIMAL)), "rlhf")


def test_vision_env_refuses_foreign_pixel_settings(write):
    cfg = load_config(write("c.yaml", MINIMAL), {"data.min_pixels": 3136})
    assert vision_env(cfg.data) == {"MIN_PIXELS": "3136"}
    env: dict[str, str] = {}
    apply_vision_env(cfg.data, env)
    assert env == {"MIN_PIXELS": "3136"}
    env["IMAGE_MIN_TOKEN_NUM"] = "4"  # what ms-swift derives in-process: ours, accepted
    apply_vision_env(cfg.data, env)
    with pytest.raises(ConfigError, match=r"MAX_PIXELS=1003520 .* set data\.max_pixels"):
        apply_vision_env(cfg.data, {"MAX_PIXELS": "1003520"})
    with pytest.raises(ConfigError, match=r"MIN_PIXELS=999 .* set data\.min_pixels"):
        apply_vision_env(cfg.data, {"MIN_PIXELS": "999"})


# ------------------------------------------------------------------------------- against ms-swift


@pytest.fixture
def restore_environ():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _fake_model_dir(path: Path) -> Path:
    """A model directory that satisfies ms-swift's argument parsing (it reads config.json only)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Qwen2_5_VLForConditionalGeneration"],
                "model_type": "qwen2_5_vl",
                "torch_dtype": "float32",
                "hidden_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 1,
                "vocab_size": 1024,
                "max_position_embeddings": 4096,
                "vision_config": {"depth": 1, "hidden_size": 32},
            }
        )
    )
    return path


class TestMsSwiftContract:
    """Our names and choice lists against the installed ms-swift (imports it: ~6 s, once)."""

    def test_names_and_choices_match_ms_swift(self):
        swift_args = pytest.importorskip("swift.arguments")
        from pipeline import config_schema as schema

        rlhf_fields = {f.name: f for f in dataclasses.fields(swift_args.RLHFArguments)}
        sft_fields = {f.name for f in dataclasses.fields(swift_args.SftArguments)}
        for name, ours in SWIFT_NAMES_SET_BY_CONFIG.items():
            if " " in ours:  # an old spelling we point away from (train_type is gone from 4.x)
                continue
            assert name in rlhf_fields, name
            if not ours.startswith("rlhf."):
                assert name in sft_fields, name
        cfg = load_config(REPO / "configs/stage_2_llm_lora_gkd.yaml")
        assert set(swift_kwargs(cfg, "rlhf")) <= set(rlhf_fields)
        assert set(swift_kwargs(cfg, "sft")) <= sft_fields

        def choices(name: str) -> set:
            import typing

            hints = typing.get_type_hints(swift_args.RLHFArguments)
            return {a for a in typing.get_args(hints[name]) if a is not None}

        assert set(schema.TRUNCATION_STRATEGIES) == choices("truncation_strategy") - {"split"}
        assert set(schema.TORCH_DTYPES) == choices("torch_dtype")
        assert "gkd" in choices("rlhf_type")
        assert set(schema.TUNER_TYPES) <= swift_args.get_supported_tuners()
        ds_dir = Path(swift_args.__file__).parents[1] / "config"
        assert all((ds_dir / f"{name}.json").is_file() for name in schema.DEEPSPEED_PRESETS)
        defaults = swift_args.RLHFArguments.__dataclass_fields__
        assert defaults["temperature"].default == 0.9 and defaults["max_pixels"].default is None

    def test_extra_keys_are_checked_against_the_arguments_class(self, write):
        pytest.importorskip("swift.arguments")
        from pipeline.train.swift_args import check_extra_keys

        path = write("gkd.yaml", MINIMAL + GKD)
        check_extra_keys(load_config(path, {"train.extra": {"vit_lr": 1e-6, "aligner_lr": 1e-5}}))
        check_extra_keys(
            load_config(path, {"train.extra": {"gkd_logits_topk": 8}}), "rlhf"
        )  # stock GKD bench
        with pytest.raises(
            ConfigError, match=r"train\.extra\.vit_lrr: is not an ms-swift argument; did you mean vit_lr"
        ):
            check_extra_keys(load_config(path, {"train.extra": {"vit_lrr": 1e-6}}))
        with pytest.raises(ConfigError, match=r"train\.extra\.gkd_logits_topk: is an RLHF-only argument"):
            check_extra_keys(load_config(path, {"train.extra": {"gkd_logits_topk": 8}}))

    def test_builds_real_arguments_from_demo_configs(
        self, tmp_path: Path, restore_environ, monkeypatch: pytest.MonkeyPatch
    ):
        pytest.importorskip("swift.arguments")
        from pipeline.train.swift_args import to_swift_args

        monkeypatch.chdir(REPO)
        student = _fake_model_dir(tmp_path / "student")
        teacher = _fake_model_dir(tmp_path / "teacher")
        sft_cfg = load_config(
            "configs/demo/student_sft.yaml",
            {"model.model": str(student), "train.output_dir": str(tmp_path / "out_sft")},
        )
        args = to_swift_args(sft_cfg)
        assert type(args).__name__ == "SftArguments"
        assert args.output_dir == str(tmp_path / "out_sft")  # no version suffix
        assert (args.max_pixels, args.truncation_strategy, args.loss_scale) == (12544, "delete", "default")
        assert (args.tuner_type, args.fp16, args.bf16) == ("full", False, False)

        gkd_cfg = load_config(
            "configs/demo/student_gkd_cached.yaml",
            {
                "model.model": str(student),
                "rlhf.teacher_model": str(teacher),
                "rlhf.lmbda": 0.5,
                "train.output_dir": str(tmp_path / "out_gkd"),
                "data.min_pixels": 3136,
            },
        )
        assert type(to_swift_args(gkd_cfg)).__name__ == "SftArguments"  # training: the SFT trainer
        args = to_swift_args(gkd_cfg, "rlhf")
        assert type(args).__name__ == "RLHFArguments"
        assert (args.rlhf_type, args.beta, args.sft_alpha, args.lmbda) == ("gkd", 0.0, 0.5, 0.5)
        assert (args.temperature, args.max_completion_length, args.seq_kd) == (0.9, 64, False)
        assert args.teacher_model == str(teacher) and args.loss_scale == "default"
        assert os.environ["MIN_PIXELS"] == "3136"

        missing = load_config("configs/demo/student_sft.yaml", {"train.output_dir": str(tmp_path / "x")})
        if not Path(missing.model.model).exists():
            with pytest.raises(ConfigError, match=r"model\.model: model directory 'runs/demo/student-init'"):
                to_swift_args(missing)


# ------------------------------------------------------------------ bad input: one-line errors


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from pipeline.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("item", ["rlhf.beta=[1", "rlhf.beta={a: 1", "custom.top_k='8"])
def test_unparseable_set_value_is_a_one_line_error(item, write, capsys):
    path = write("c.yaml", MINIMAL + GKD)
    err = _cli_error(["train", "--config", str(path), "--set", item], capsys)
    assert err.startswith(f"error: ConfigError: --set {item!r}: the value is not valid YAML")


def test_non_utf8_config_is_a_one_line_error(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + b"# caf\xe9\n")
    err = _cli_error(["train", "--config", str(path)], capsys)
    assert "latin1.yaml: not UTF-8 text (byte b'\\xe9' at offset" in err


@pytest.mark.parametrize("value", [".inf", ".nan", "-.inf"])
def test_loss_temperature_must_be_finite(value, write):
    path = write("c.yaml", MINIMAL + GKD)
    err = _error(path, {"custom.loss_temperature": yaml.safe_load(value)})
    assert "custom.loss_temperature: must be a finite number > 0" in err


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_max_skipped_fraction_is_a_fraction(value, write):
    path = write("c.yaml", MINIMAL + GKD)
    assert "custom.max_skipped_fraction: must be in [0, 1]" in _error(
        path, {"custom.max_skipped_fraction": value}
    )


@pytest.mark.parametrize("limit", ["0", "-3", "two"])
def test_cache_limit_must_be_a_positive_count(limit, write, capsys):
    from pipeline.cli import main

    path = write("c.yaml", MINIMAL + GKD)
    with pytest.raises(SystemExit) as info:
        main(["cache", "--config", str(path), "--limit", limit])
    assert info.value.code == 2
    assert f"argument --limit: expected an integer >= 1, got {limit if limit == 'two' else int(limit)}" in (
        capsys.readouterr().err.replace("'two'", "two")
    )


def _numeric_keys(kind: type) -> list[str]:
    """Every dotted key whose field holds a ``kind`` (``kind | None`` included)."""
    import typing

    keys = []
    for section, cls in SECTIONS.items():
        for name, tp in typing.get_type_hints(cls).items():
            if tp is kind or kind in typing.get_args(tp):
                keys.append(f"{section}.{name}")
    return keys


FLOAT_KEYS = _numeric_keys(float)


def test_float_keys_are_found():
    assert {"custom.written_temperature", "custom.cache_shard_mb", "train.weight_decay"} <= set(FLOAT_KEYS)


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_refuses_nan_and_inf(key, value, write):
    # Set in the child file, so the message must name that file and the key.
    write("parent.yaml", MINIMAL + GKD)
    section, name = key.split(".")
    child = write("child.yaml", f"inherit: parent.yaml\n{section}: {{{name}: {value}}}\n")
    assert f"child.yaml: {key}: must be " in _error(child)


NUMERIC_CASES = {
    # (dotted key, value, phrase): values the old checks let through to a traceback or garbage
    "written temperature inf": ("custom.written_temperature", ".inf", "finite number >= 0"),
    "shard budget below a byte": ("custom.cache_shard_mb", "1e-9", "finite number >= 0.0009765625"),
    "encoded cache inf": ("custom.encoded_cache_mb", ".inf", "finite number >= 0"),
    "encoded cache negative": ("custom.encoded_cache_mb", "-1", "finite number >= 0"),
    "weight decay nan": ("train.weight_decay", ".nan", "finite number >= 0"),
    "epochs nan": ("train.num_train_epochs", ".nan", "finite number"),
    "epochs ignored but inf": ("train.num_train_epochs", ".inf", "finite number"),
    "sft_alpha inf": ("rlhf.sft_alpha", ".inf", "finite number >= 0"),
    "seed negative": ("train.seed", "-1", "in [0, 4294967295]"),
    "seed too large": ("train.seed", "4294967296", "in [0, 4294967295]"),
    "int too large for a float": ("train.learning_rate", "1" + "0" * 400, "too large"),
}


@pytest.mark.parametrize("case", list(NUMERIC_CASES))
def test_numeric_values_out_of_range_are_refused(case, write):
    key, value, phrase = NUMERIC_CASES[case]
    path = write("c.yaml", MINIMAL + GKD)
    extra = {"train.max_steps": 10} if case == "epochs ignored but inf" else {}
    err = _error(path, {key: yaml.safe_load(value) if value != "1e-9" else 1e-9, **extra})
    assert f"{key}: " in err and phrase in err, err


def test_numeric_values_at_their_bounds_load(write):
    path = write("c.yaml", MINIMAL + GKD)
    cfg = load_config(
        path,
        {
            "custom.written_temperature": 0,
            "custom.encoded_cache_mb": 0,
            "custom.cache_shard_mb": 1 / 1024,
            "train.weight_decay": 0,
            "train.seed": 2**32 - 1,
            "rlhf.sft_alpha": 0,
        },
    )
    assert cfg.custom.cache_shard_mb == 1 / 1024 and cfg.train.seed == 2**32 - 1


def test_invalid_yaml_is_one_line_naming_the_file_and_line(write):
    path = write("broken.yaml", MINIMAL + "custom: {top_k: [8\n")
    err = _error(path)
    assert "\n" not in err and err.startswith(f"{path}: invalid YAML") and "line 4" in err, err


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("custom.written_temperature", float("inf")),
        ("custom.written_temperature", float("nan")),
        ("custom.encoded_cache_mb", float("inf")),
        ("custom.cache_shard_mb", 1e-9),
        ("custom.cache_shard_mb", float("inf")),
    ],
)
def test_float_knobs_must_be_finite_and_in_range(key: str, value: float) -> None:
    from pipeline.config_schema import CustomConfig

    with pytest.raises(ConfigError, match=rf"^{key}: must be a finite number >= "):
        CustomConfig(**{key.split(".", 1)[1]: value})
