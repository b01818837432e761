"""Demo asset builder: determinism, model/tokenizer consistency, dataset ground truth, loadable models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.demo.assets import build_demo_assets
from pipeline.demo.captions import objects_from_records, parse_caption, sort_key
from pipeline.demo.dataset import read_rows
from pipeline.demo.models import STUDENT_SPEC, TEACHER_SPEC, mrope_section
from pipeline.errors import ConfigError

SIZES = {"train": 40, "val": 12, "test": 12}  # small: the whole module runs in seconds
SPECIAL_NAMES = {
    "image_token_id": "<|image_pad|>",
    "video_token_id": "<|video_pad|>",
    "vision_start_token_id": "<|vision_start|>",
    "vision_end_token_id": "<|vision_end|>",
}


def _build(root: Path, seed: int) -> dict[str, Path]:
    return build_demo_assets(
        root, seed=seed, n_train=SIZES["train"], n_val=SIZES["val"], n_test=SIZES["test"]
    )


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _build(tmp_path_factory.mktemp("demo") / "assets", seed=0)


@pytest.fixture(scope="module")
def loaded(assets: dict[str, Path]) -> dict[str, tuple[Any, Any]]:
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    return {
        name: (
            Qwen2_5_VLForConditionalGeneration.from_pretrained(assets[name]).eval(),
            AutoProcessor.from_pretrained(assets[name]),
        )
        for name in ("teacher", "student")
    }


def test_same_seed_gives_identical_files(assets: dict[str, Path], tmp_path: Path) -> None:
    again = _build(tmp_path / "again", seed=0)
    first, second = _hashes(assets["root"]), _hashes(again["root"])
    assert first == second
    assert any(name.endswith("model.safetensors") for name in first)
    assert any(name.endswith(".png") for name in first)


def test_other_seed_changes_weights_and_data(assets: dict[str, Path], tmp_path: Path) -> None:
    other = _hashes(_build(tmp_path / "other", seed=1)["root"])
    base = _hashes(assets["root"])
    for name in ("teacher-init/model.safetensors", "student-init/model.safetensors", "data/train.jsonl"):
        assert other[name] != base[name]
    # The tokenizer depends on the vocabulary only, so every seed shares it.
    assert other["teacher-init/tokenizer.json"] == base["teacher-init/tokenizer.json"]


def test_refuses_to_overwrite_without_flag(assets: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="overwrite"):
        _build(assets["root"], seed=0)


def test_teacher_is_at_least_four_times_student(loaded: dict[str, tuple[Any, Any]]) -> None:
    teacher, student = (sum(p.numel() for p in loaded[n][0].parameters()) for n in ("teacher", "student"))
    assert teacher >= 4 * student


def test_special_token_ids_agree_with_configs(
    assets: dict[str, Path], loaded: dict[str, tuple[Any, Any]]
) -> None:
    summary = json.loads(assets["summary"].read_text())
    for name in ("teacher", "student"):
        model, processor = loaded[name]
        tokenizer = processor.tokenizer
        config = model.config
        for field, token in SPECIAL_NAMES.items():
            assert (
                getattr(config, field)
                == tokenizer.convert_tokens_to_ids(token)
                == summary["special_token_ids"][field]
            )
        assert (
            config.text_config.eos_token_id
            == tokenizer.eos_token_id
            == tokenizer.convert_tokens_to_ids("<|im_end|>")
        )
        assert (
            config.text_config.pad_token_id
            == tokenizer.pad_token_id
            == tokenizer.convert_tokens_to_ids("<|endoftext|>")
        )
        assert config.text_config.vocab_size >= len(tokenizer)
        assert processor.image_token_id == config.image_token_id
    assert loaded["teacher"][0].config.text_config.vocab_size % TEACHER_SPEC.vocab_multiple == 0
    assert loaded["student"][0].config.text_config.vocab_size == len(loaded["student"][1].tokenizer)


def test_models_share_tokenizer_and_processor_files(assets: dict[str, Path]) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "processor_config.json"):
        assert (assets["teacher"] / name).read_bytes() == (assets["student"] / name).read_bytes()


def test_mrope_section_sums_to_half_head_dim() -> None:
    for spec in (TEACHER_SPEC, STUDENT_SPEC):
        head_dim = spec.hidden_size // spec.num_heads
        assert sum(mrope_section(head_dim)) == head_dim // 2


def test_rows_parse_back_to_their_ground_truth(assets: dict[str, Path]) -> None:
    for split in ("train", "val", "test"):
        rows = read_rows(assets[split])
        assert len(rows) == SIZES[split]
        for row in rows:
            assert row["sample_id"].startswith(f"{split}-")
            prompt, answer = (m["content"] for m in row["messages"])
            images = row.get("images", [])
            assert prompt.count("<image>") == len(images)
            assert all((assets[split].parent / image).is_file() for image in images)
            assert parse_caption(answer) == objects_from_records(row["objects"])  # exact: canonical order
            assert (row["task"] == "text_qa") == (not images)


def test_models_forward_and_generate(assets: dict[str, Path], loaded: dict[str, tuple[Any, Any]]) -> None:
    import torch
    from PIL import Image

    rows = read_rows(assets["train"])
    row = next(r for r in rows if len(r.get("images", [])) == 1)
    images = [Image.open(assets["data"] / p) for p in row["images"]]
    conversation = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "Describe the image in detail."}],
        }
    ]
    for name in ("teacher", "student"):
        model, processor = loaded[name]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        batch = processor(text=[prompt], images=images, return_tensors="pt")
        # 56x56 image, patch 14, merge 2: one 4x4 patch grid, four LLM image tokens.
        assert batch["image_grid_thw"].tolist() == [[1, 4, 4]]
        assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 4
        with torch.no_grad():
            logits = model(**batch).logits
            generated = model.generate(**batch, max_new_tokens=3)
        assert logits.shape == (1, batch["input_ids"].shape[1], model.config.text_config.vocab_size)
        assert torch.isfinite(logits).all()
        assert generated.shape[1] > batch["input_ids"].shape[1]


def test_varied_captions_keep_the_scenes_and_change_the_words(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    varied = build_demo_assets(
        tmp_path / "varied",
        seed=0,
        n_train=SIZES["train"],
        n_val=SIZES["val"],
        n_test=SIZES["test"],
        captions="varied",
    )
    base = _hashes(assets["root"])
    other = _hashes(varied["root"])
    images = [name for name in base if name.endswith(".png")]
    assert images and all(other[name] == base[name] for name in images)  # the same scenes, pixel for pixel
    changed = 0
    for split in ("train", "test"):
        for exact_row, varied_row in zip(read_rows(assets[split]), read_rows(varied[split]), strict=True):
            assert varied_row["objects"] == exact_row["objects"]
            answer = varied_row["messages"][1]["content"]
            if varied_row["task"] != "text_qa":
                assert sorted(parse_caption(answer), key=sort_key) == objects_from_records(
                    varied_row["objects"]
                )
                changed += answer != exact_row["messages"][1]["content"]
    assert changed > SIZES["train"] // 2
    # every word of the varied style is one token, so wording choices are single decisions
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(varied["teacher"])
    for word in ("big", "little", "upper", "lower", "corner", "there", "objects", "shapes", "background"):
        assert len(tokenizer.encode(" " + word)) == 1, word
    assert json.loads(varied["summary"].read_text())["captions"] == "varied"


def test_unknown_caption_style_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="captions must be one of"):
        build_demo_assets(tmp_path / "x", captions="terse")  # type: ignore[arg-type]
