"""The demo dataset: dense-captioning rows in ms-swift's ``messages`` form, deterministic from a seed.

Each split is a jsonl file next to an ``images/`` folder; image paths in rows are relative to the
jsonl's directory. Most rows caption one image; a few caption two images, and a few are text-only
questions with an exact answer, because real caption datasets mix those in and the pipeline must
handle rows with zero, one and several images. Every row carries its ground truth in ``objects`` so
evaluation never has to parse the reference caption.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from .captions import COLOURS, POSITIONS, SHAPES, SIZES, DemoObject, format_caption
from .scene import render, sample_objects

SYSTEM_PROMPT = "You are a helpful assistant."  # what Qwen2.5-VL's chat template injects by default
CAPTION_PROMPT = "<image>Describe the image in detail."
MULTI_PROMPT = "<image><image>Describe both images."
# Share of rows per task (the rest are single-image captions).
TEXT_FRACTION = 0.05
MULTI_FRACTION = 0.05

_CORNERS = {"circle": "no corners", "square": "four corners", "triangle": "three corners"}
_OPPOSITE = dict(zip(POSITIONS, reversed(POSITIONS), strict=True))


def _object_record(obj: DemoObject) -> dict[str, Any]:
    return {
        "image": obj.image,
        "shape": obj.shape,
        "colour": obj.colour,
        "size": obj.size,
        "position": obj.position,
    }


def text_question(rng: random.Random) -> tuple[str, str]:
    """A question about the scene vocabulary with one exact answer: ``(question, answer)``."""
    kind = rng.randrange(3)
    if kind == 0:
        shape = rng.choice(SHAPES)
        return f"How many corners does a {shape} have?", f"a {shape} has {_CORNERS[shape]}."
    if kind == 1:
        position = rng.choice(POSITIONS)
        return f"Which corner is opposite the {position}?", f"the {_OPPOSITE[position]}."
    word, category = rng.choice(
        [(w, "shape") for w in SHAPES] + [(w, "colour") for w in COLOURS] + [(w, "size") for w in SIZES]
    )
    return f"Is {word} a shape, a colour or a size?", f"{word} is a {category}."


def corpus_texts() -> list[str]:
    """Every prompt, answer pattern and caption word, for training the demo tokenizer.

    Built from the vocabulary, not from sampled rows, so the tokenizer does not depend on the
    dataset sizes chosen for a build.
    """
    texts = [SYSTEM_PROMPT, CAPTION_PROMPT.replace("<image>", ""), MULTI_PROMPT.replace("<image>", "")]
    for shape in SHAPES:
        texts += [f"How many corners does a {shape} have?", f"a {shape} has {_CORNERS[shape]}."]
    for position in POSITIONS:
        texts += [f"Which corner is opposite the {position}?", f"the {_OPPOSITE[position]}."]
    for word, category in [(w, "shape") for w in SHAPES] + [(w, "colour") for w in COLOURS]:
        texts += [f"Is {word} a shape, a colour or a size?", f"{word} is a {category}."]
    for size in SIZES:
        texts += [f"Is {size} a shape, a colour or a size?", f"{size} is a size."]
        for colour in COLOURS:
            for shape in SHAPES:
                for position in POSITIONS:
                    obj = DemoObject(shape, colour, size, position)
                    texts += [format_caption([obj]), f"image 1: {format_caption([obj])} image 2:"]
    return texts


def build_split(split: str, n_rows: int, seed: int, out_dir: Path, *, prompt_only: bool = False) -> Path:
    """Write ``out_dir/{split}.jsonl`` and its PNGs under ``out_dir/images``; return the jsonl path.

    The split's rng is seeded from ``(seed, split)`` so splits are independent of each other's sizes.
    ``prompt_only``: an unlabelled pool, each row holding only its user turn and images (no assistant
    turn, no ``objects``), as uncaptioned images arrive in a real project.
    """
    rng = random.Random(f"demo-{seed}-{split}")  # str seeds hash with sha512: stable across runs
    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(n_rows):
        sample_id = f"{split}-{index:05d}"
        draw = rng.random()
        if draw < TEXT_FRACTION:
            question, answer = text_question(rng)
            rows.append(_row(sample_id, "text_qa", question, answer, [], []))
            continue
        n_images = 2 if draw < TEXT_FRACTION + MULTI_FRACTION else 1
        objects: list[DemoObject] = []
        images = []
        for image in range(n_images):
            scene = sample_objects(rng, image=image)
            name = f"{sample_id}.png" if n_images == 1 else f"{sample_id}-{image + 1}.png"
            # optimize=False and no metadata: PNG bytes depend only on the pixels.
            render(scene).save(image_dir / name, format="PNG", optimize=False)
            objects += scene
            images.append(f"images/{name}")
        task, prompt = ("caption", CAPTION_PROMPT) if n_images == 1 else ("multi_caption", MULTI_PROMPT)
        rows.append(_row(sample_id, task, prompt, format_caption(objects, n_images), images, objects))
    if prompt_only:
        for row in rows:
            row["messages"] = row["messages"][:1]
            del row["objects"]
    path = out_dir / f"{split}.jsonl"
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def _row(
    sample_id: str, task: str, prompt: str, answer: str, images: list[str], objects: list[DemoObject]
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "sample_id": sample_id,
        "task": task,
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
    }
    # Text-only rows carry no "images" key at all, like most text rows in real mixed datasets.
    if images:
        row["images"] = images
    row["objects"] = [_object_record(o) for o in objects]
    return row


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a demo jsonl file."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
