"""Tests for pipeline.evaluate.run on the tiny random-init demo models (CPU, one asset build per module)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from pipeline.config_schema import CustomConfig, DataConfig, DistillConfig, ModelConfig, TrainConfig
from pipeline.data import Row, read_rows
from pipeline.demo.caption_metric import constant_baseline, object_metrics
from pipeline.demo.captions import DemoObject, format_caption
from pipeline.errors import CacheMismatchError, ConfigError
from pipeline.evaluate import run as ev
from pipeline.models import resolve_checkpoint
from pipeline.splits import split_path
from pipeline.teacher.forward import teacher_topk

N_VAL = 10


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pipeline.demo.assets import build_demo_assets

    return build_demo_assets(tmp_path_factory.mktemp("eval-assets"), n_train=30, n_val=N_VAL, n_test=4)


def make_cfg(assets: dict[str, Path], output_dir: Path) -> DistillConfig:
    return DistillConfig(
        model=ModelConfig(
            model=str(assets["student"]),
            model_type="qwen2_5_vl",
            template="qwen2_5_vl",
            torch_dtype="float32",
        ),
        data=DataConfig(dataset=[str(assets["train"])], val_dataset=[str(assets["val"])], max_length=512),
        train=TrainConfig(output_dir=str(output_dir), learning_rate=1e-4, num_train_epochs=1, seed=7),
        custom=CustomConfig(caption_metric="pipeline.demo.caption_metric:object_metrics"),
    )


@pytest.fixture(scope="module")
def cfg(assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> DistillConfig:
    return make_cfg(assets, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def student(cfg: DistillConfig, assets: dict[str, Path]) -> tuple[Any, Any]:
    model, encoder, _ = ev.load_trained(cfg, assets["student"])
    return model, encoder


@pytest.fixture(scope="module")
def true_run(
    cfg: DistillConfig, assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("metrics") / "sub" / "metrics.json"
    return ev.run_evaluation(
        cfg, assets["student"], "val", out, ev.EvalOptions(max_rows=8, max_new_tokens=16)
    )


# --------------------------------------------------------------------------------- end to end


def test_run_evaluation_keys_and_sanity(true_run: dict[str, Any], student: tuple[Any, Any]) -> None:
    for key in (
        "ce",
        "token_accuracy",
        "caption_precision",
        "caption_recall",
        "caption_f1",
        "hallucination_rate",
        "baseline_f1",
        "rows_in",
        "rows_scored",
        "rows_skipped",
        "tokens",
        "wall_s",
        "caption_examples",
        "bleu4",
        "rouge_l",
        "cider",
    ):
        assert key in true_run, key
    assert "kl" not in true_run  # no teacher cache configured
    vocab = student[0].get_output_embeddings().weight.shape[0]
    # A random-init model is close to uniform: CE near log(V).
    assert math.isfinite(true_run["ce"]) and abs(true_run["ce"] - math.log(vocab)) < 1.0
    assert 0.0 <= true_run["token_accuracy"] <= 1.0
    assert true_run["rows_in"] == 8 == true_run["rows_scored"] + true_run["rows_skipped"]
    assert true_run["tokens"] > 0
    assert true_run["caption_rows"] > 0 and true_run["caption_f1"] < 0.2
    assert 0.0 <= true_run["baseline_f1"] <= 1.0
    assert true_run["caption_examples"] and {"reference", "generated"} <= set(true_run["caption_examples"][0])
    written = Path(true_run["checkpoint"])  # the resolved model dir
    assert written.is_dir()


def test_metrics_json_written(
    cfg: DistillConfig, assets: dict[str, Path], student: tuple[Any, Any], tmp_path: Path
) -> None:
    model, encoder = student
    out = tmp_path / "a" / "b" / "m.json"
    opts = ev.EvalOptions(max_rows=3, generate=False)
    m = ev.run_evaluation(cfg, None, "val", out, opts, model=model, encoder=encoder)
    assert json.loads(out.read_text()) == m
    assert "caption_f1" not in m


def test_deterministic(
    cfg: DistillConfig, student: tuple[Any, Any], true_run: dict[str, Any], tmp_path: Path
) -> None:
    model, encoder = student
    again = ev.run_evaluation(
        cfg,
        None,
        "val",
        tmp_path / "m.json",
        ev.EvalOptions(max_rows=8, max_new_tokens=16),
        model=model,
        encoder=encoder,
    )
    for key in ("ce", "token_accuracy", "tokens", "caption_f1", "baseline_f1", "caption_examples"):
        assert again[key] == true_run[key], key


def test_shuffled_images_change_ce(
    cfg: DistillConfig, student: tuple[Any, Any], true_run: dict[str, Any], tmp_path: Path
) -> None:
    model, encoder = student
    shuffled = ev.run_evaluation(
        cfg,
        None,
        "val",
        tmp_path / "s.json",
        ev.EvalOptions(max_rows=8, generate=False, shuffle_images=True),
        model=model,
        encoder=encoder,
    )
    assert shuffled["shuffle_images"] is True
    assert shuffled["rows_scored"] == true_run["rows_scored"]
    assert shuffled["tokens"] == true_run["tokens"]  # same images sizes: only pixel content moved
    assert shuffled["ce"] != true_run["ce"]


def test_compare_true_vs_shuffled(cfg: DistillConfig, assets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp.json"
    res = ev.compare_true_vs_shuffled(cfg, assets["student"], "val", max_rows=6, out=out)
    assert res["ce_gap"] == pytest.approx(res["ce_shuffled"] - res["ce_true"])
    assert res["ce_gap"] != 0.0
    assert json.loads(out.read_text()) == res


def test_unusable_rows_are_skipped(
    cfg: DistillConfig, assets: dict[str, Path], student: tuple[Any, Any], tmp_path: Path
) -> None:
    lines = Path(assets["val"]).read_text().splitlines()[:4]
    broken = next(json.loads(line) for line in lines if json.loads(line)["images"])
    broken["sample_id"] = "broken-image"
    broken["images"] = ["images/does-not-exist.png" for _ in broken["images"]]
    split = Path(assets["val"]).with_name("broken.jsonl")
    split.write_text("\n".join([*lines, json.dumps(broken), "{not json"]) + "\n")
    model, encoder = student
    m = ev.run_evaluation(
        cfg, None, split, tmp_path / "m.json", ev.EvalOptions(max_new_tokens=8), model=model, encoder=encoder
    )
    assert m["rows_in"] == 6 and m["rows_scored"] == 4 and m["rows_skipped"] == 2
    assert m["skip_reasons"] == {"missing_image": 1, "bad_row": 1}


def _noisy_copy(model: Any) -> Any:
    """A copy with large random weights: unlike the init, its outputs vary from row to row."""
    noisy = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return noisy


def test_padding_does_not_change_scores(assets: dict[str, Path], student: tuple[Any, Any]) -> None:
    model, encoder = student
    model = _noisy_copy(model)
    encoded, _ = ev.encode_rows(encoder, read_rows(assets["val"]))  # text, one- and two-image rows mixed
    one, many = (ev.score_tokens(model, encoder, encoded, batch_size=b) for b in (1, len(encoded)))
    assert one["tokens"] == many["tokens"] and one["correct"] == many["correct"]
    assert one["ce_sum"] == pytest.approx(many["ce_sum"], rel=1e-5)


def test_batched_generation_matches_one_by_one(assets: dict[str, Path], student: tuple[Any, Any]) -> None:
    model, encoder = student
    model = _noisy_copy(model)
    rows = [r for r in read_rows(assets["val"]) if isinstance(r, Row)]
    batched = ev.generate_captions(model, encoder, rows, max_new_tokens=8, batch_size=len(rows))
    single = ev.generate_captions(model, encoder, rows, max_new_tokens=8, batch_size=1)
    assert batched == single
    assert len(set(single)) > 1  # the check means something only if rows differ


# ------------------------------------------------------------------------------------ KL to cache


def fake_cache(model: Any, encoder: Any, rows: list[Row], top_k: int) -> SimpleNamespace:
    """A CacheReader stand-in built from ``model`` exactly as the cache stage builds rows."""
    encoded, _ = ev.encode_rows(encoder, rows)
    store = {}
    real_vocab = len(encoder.tokenizer)
    for row, enc in encoded:
        batch = encoder.template.data_collator([dict(enc.inputs)])
        with torch.no_grad():
            t = teacher_topk(model, batch, top_k, real_vocab)
        store[row.sample_id] = SimpleNamespace(
            positions=t.positions.numpy(),
            target_ids=t.target_ids.numpy(),
            topk_ids=t.topk_ids.numpy(),
            topk_logprobs=t.topk_logprobs.numpy(),
            tail_logprobs=t.tail_logprobs.numpy(),
            target_logprobs=t.target_logprobs.numpy(),
            encoding_hash=enc.encoding_hash,
            num_tokens=len(enc.inputs["input_ids"]),
        )
    return SimpleNamespace(sample_ids=list(store), get=store.__getitem__)


def test_kl_to_own_cache_is_zero(assets: dict[str, Path], student: tuple[Any, Any]) -> None:
    model, encoder = student
    rows = [r for r in read_rows(assets["val"])[:4] if isinstance(r, Row)]
    cache = fake_cache(model, encoder, rows[:3], top_k=len(encoder.tokenizer))  # row 4 not cached
    encoded, _ = ev.encode_rows(encoder, rows)
    sums = ev.score_tokens(model, encoder, encoded, batch_size=2, cache=cache, beta=0.0)
    assert sums["kl_rows"] == 3 and 0 < sums["kl_tokens"] < sums["tokens"]
    assert abs(sums["kl_sum"]) / sums["kl_tokens"] < 1e-5


def test_kl_to_teacher_cache(
    cfg: DistillConfig,
    assets: dict[str, Path],
    student: tuple[Any, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from swift.model import get_model_processor

    teacher, _ = get_model_processor(
        str(assets["teacher"]), model_type="qwen2_5_vl", torch_dtype=torch.float32
    )
    model, encoder = student
    rows = [r for r in read_rows(assets["val"])[:3] if isinstance(r, Row)]
    cache = fake_cache(teacher, encoder, rows, top_k=8)
    monkeypatch.setattr(ev, "open_eval_cache", lambda cfg, split: cache)
    opts = ev.EvalOptions(max_rows=3, generate=False)
    m = ev.run_evaluation(cfg, None, "val", tmp_path / "m.json", opts, model=model, encoder=encoder)
    assert m["kl"] > 0 and math.isfinite(m["kl"]) and m["kl_rows"] == 3 and m["kl_tokens"] == m["tokens"]
    # Shuffled images never meet the cache (their encodings are not the cached ones).
    s = ev.run_evaluation(
        cfg,
        None,
        "val",
        tmp_path / "s.json",
        ev.EvalOptions(max_rows=3, generate=False, shuffle_images=True),
        model=model,
        encoder=encoder,
    )
    assert "kl" not in s


def test_cache_hash_mismatch_raises(assets: dict[str, Path], student: tuple[Any, Any]) -> None:
    model, encoder = student
    rows = [r for r in read_rows(assets["val"])[:1] if isinstance(r, Row)]
    cache = fake_cache(model, encoder, rows, top_k=4)
    cache.get(rows[0].sample_id).encoding_hash = "0" * 64
    encoded, _ = ev.encode_rows(encoder, rows)
    with pytest.raises(CacheMismatchError, match=rows[0].sample_id):
        ev.score_tokens(model, encoder, encoded, cache=cache)


# ------------------------------------------------------------------------------ checkpoints, splits


def test_resolve_checkpoint(cfg: DistillConfig, tmp_path: Path) -> None:
    run = tmp_path / "run"
    for name in ("checkpoint-9", "checkpoint-10", "checkpoint-2"):
        (run / name).mkdir(parents=True)
        (run / name / "config.json").write_text("{}")
    (run / "checkpoint-11").mkdir()  # incomplete save: no model files
    c = DistillConfig(
        model=cfg.model,
        data=cfg.data,
        train=TrainConfig(output_dir=str(run), learning_rate=1e-4, num_train_epochs=1),
    )
    assert resolve_checkpoint(c, None) == run / "checkpoint-10"
    (run / "final").mkdir()
    (run / "final" / "adapter_config.json").write_text("{}")
    assert resolve_checkpoint(c, run) == run / "final"
    assert resolve_checkpoint(c, run / "checkpoint-2") == run / "checkpoint-2"
    with pytest.raises(ConfigError, match="no model"):
        resolve_checkpoint(c, tmp_path / "empty")


def test_lora_checkpoint_is_applied(
    cfg: DistillConfig, assets: dict[str, Path], true_run: dict[str, Any], tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from swift.model import get_model_processor

    base, _ = get_model_processor(str(assets["student"]), model_type="qwen2_5_vl", torch_dtype=torch.float32)
    torch.manual_seed(0)
    # Non-zero B matrices, so the adapter really changes the outputs.
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "run" / "checkpoint-3")
    c = make_cfg(assets, tmp_path / "run")
    m = ev.run_evaluation(c, None, "val", tmp_path / "m.json", ev.EvalOptions(max_rows=8, generate=False))
    assert m["checkpoint"].endswith("checkpoint-3")
    assert m["tokens"] == true_run["tokens"] and m["ce"] != true_run["ce"]


def test_split_path(cfg: DistillConfig, assets: dict[str, Path]) -> None:
    assert split_path(cfg, "val") == Path(assets["val"])
    assert split_path(cfg, "test") == Path(assets["test"])
    assert split_path(cfg, str(assets["train"])) == Path(assets["train"])
    with pytest.raises(ConfigError):
        split_path(cfg, "train.csv")


# -------------------------------------------------------------------------------- pure helpers


def _row(i: int, n_images: int) -> Row:
    return Row(
        f"r{i}",
        [{"role": "user", "content": "<image>" * n_images}, {"role": "assistant", "content": "x"}],
        [f"/img/{i}-{k}.png" for k in range(n_images)],
    )


def test_derange_images() -> None:
    rows = [_row(i, n) for i, n in enumerate([1, 1, 0, 1, 2, 1, 2, 2, 3])]
    out, kept = ev.derange_images(rows, seed=3)
    assert kept == 1  # the single three-image row has no partner
    assert [len(r.images) for r in out] == [len(r.images) for r in rows]
    for before, after in zip(rows, out, strict=True):
        if len(before.images) in (1, 2):
            assert after.images != before.images  # no fixed point
    assert sorted(tuple(r.images) for r in out) == sorted(tuple(r.images) for r in rows)  # a permutation
    assert ev.derange_images(rows, seed=3)[0] == out
    assert ev.derange_images(rows, seed=4)[0] != out


def test_constant_baseline_and_caption_metrics(tmp_path: Path) -> None:
    a = {"shape": "circle", "colour": "red", "size": "large", "position": "top left"}
    b = {"shape": "square", "colour": "blue", "size": "small", "position": "bottom right"}
    train = tmp_path / "train.jsonl"
    recs = [[a], [b, a], [a, b], [b]]
    train.write_text(
        "".join(
            json.dumps(
                {
                    "sample_id": f"t{i}",
                    "messages": [
                        {"role": "user", "content": "<image>d"},
                        {"role": "assistant", "content": "c"},
                    ],
                    "images": ["x.png"],
                    "objects": r,
                }
            )
            + "\n"
            for i, r in enumerate(recs)
        )
    )
    baseline = constant_baseline(train)
    assert baseline is not None and [o.shape for o in baseline] == ["circle", "square"]  # order-free count 2
    assert constant_baseline(tmp_path / "missing.jsonl") is None

    rows = [Row("v0", [], ["x.png"], {"objects": [a]}), Row("v1", [], ["x.png"], {"objects": [b]})]
    perfect = [
        format_caption([DemoObject("circle", "red", "large", "top left")]),
        "a small blue square at the bottom right.",
    ]
    m = object_metrics(rows, perfect, str(train))
    assert m["caption_f1"] == 1.0 and m["hallucination_rate"] == 0.0
    # Baseline predicts both objects on each row: 2 of 4 predictions match, recall 1.
    assert m["baseline_f1"] == pytest.approx(2 * 0.5 * 1.0 / 1.5)


def test_reference_metrics_score_any_captions() -> None:
    from pipeline.evaluate.captions import caption_metrics, load_caption_metric, reference_metrics

    refs = ["a large red circle at the top left.", "two small blue squares"]
    perfect = reference_metrics(refs, list(refs))
    assert perfect["bleu4"] == pytest.approx(1.0, abs=1e-6) and perfect["rouge_l"] == pytest.approx(1.0)
    worse = reference_metrics(refs, ["a small red circle at the top right.", "nothing here"])
    assert worse["bleu4"] < perfect["bleu4"] and worse["rouge_l"] < 1.0 and worse["cider"] < perfect["cider"]
    assert reference_metrics([], []) == {"bleu4": None, "rouge_l": None, "cider": None}
    empty = reference_metrics(refs, ["", ""])  # empty generations score zero, never crash
    assert empty["bleu4"] == pytest.approx(0.0, abs=1e-6) and empty["rouge_l"] == 0.0
    rows = [Row("r0", [{"role": "assistant", "content": refs[0]}], ["x.png"], {})]
    m = caption_metrics(rows, [refs[0]])
    assert m["caption_rows"] == 1 and m["caption_examples"][0]["generated"] == refs[0]
    with pytest.raises(ConfigError, match="module:function"):
        load_caption_metric("pipeline.demo.caption_metric")
    with pytest.raises(ConfigError, match="cannot load"):
        load_caption_metric("pipeline.demo.caption_metric:nope")


def test_recipe_names_the_training_knobs_a_comparison_shows() -> None:
    from pipeline.config import load_config
    from pipeline.evaluate.report import describe_recipe
    from pipeline.evaluate.run import recipe

    root = Path(__file__).resolve().parents[2] / "configs" / "demo"
    gkd = recipe(load_config(root / "student_gkd_written.yaml", overrides={"rlhf.beta": 0.0}))
    assert gkd == {
        "trainer": "gkd_cached",
        "learning_rate": gkd["learning_rate"],
        "max_steps": 300,
        "beta": 0.0,
        "sft_alpha": 0.5,
        "lmbda": 0.0,
    }
    assert describe_recipe(gkd).startswith("gkd_cached, lr ") and describe_recipe(gkd).endswith(
        "beta 0, sft_alpha 0.5, lmbda 0"
    )
    sft = recipe(load_config(root / "student_sft.yaml"))
    assert set(sft) == {"trainer", "learning_rate", "max_steps"}
