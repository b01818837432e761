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

from .captions import (
    COLOURS,
    NUMBER_WORDS,
    POSITIONS,
    SHAPES,
    SIZE_WORDS,
    SIZES,
    VERTICAL_WORDS,
    CaptionStyle,
    DemoObject,
    caption_for,
    format_caption,
    sort_key,
    varied_caption,
)
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


def corpus_texts(captions: CaptionStyle = "exact") -> list[str]:
    """Every prompt, answer pattern and caption word, for training the demo tokenizer.

    Built from the vocabulary, not from sampled rows, so the tokenizer does not depend on the
    dataset sizes chosen for a build. ``varied`` adds the varied style's words (templates, synonyms,
    count sentences); ``exact`` is the corpus the exact task has always used, so its tokenizer and
    models stay byte-identical.
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
    if captions == "varied":
        texts += _varied_corpus()
    return texts


def _varied_corpus() -> list[str]:
    # Every synonym and template word in context, several draws per object, so each word is seen
    # often enough to become one BPE token.
    rng = random.Random("demo-tokenizer-corpus")
    texts = []
    for size in SIZES:
        for colour in COLOURS:
            for shape in SHAPES:
                for position in POSITIONS:
                    obj = DemoObject(shape, colour, size, position)
                    texts += [varied_caption([obj], 1, rng) for _ in range(4)]
    words = [w for ws in SIZE_WORDS.values() for w in ws] + [w for ws in VERTICAL_WORDS.values() for w in ws]
    texts += [" ".join(words), " ".join(NUMBER_WORDS)]
    for n in range(1, 4):
        texts += [
            f"there are {NUMBER_WORDS[n]} objects.",
            f"the image shows {NUMBER_WORDS[n]} objects.",
            f"{NUMBER_WORDS[n]} shapes on a grey background.",
        ]
    return texts


def build_split(
    split: str,
    n_rows: int,
    seed: int,
    out_dir: Path,
    *,
    prompt_only: bool = False,
    captions: CaptionStyle = "exact",
) -> Path:
    """Write ``out_dir/{split}.jsonl`` and its PNGs under ``out_dir/images``; return the jsonl path.

    The split's rng is seeded from ``(seed, split)`` so splits are independent of each other's sizes.
    ``prompt_only``: an unlabelled pool, each row holding only its user turn and images (no assistant
    turn, no ``objects``), as uncaptioned images arrive in a real project. ``captions``: the caption
    style (see ``pipeline.demo.captions``). Phrasings come from their own rng, seeded per split, so
    both styles draw the same scenes, images and tasks: the tasks differ only in their wording.
    """
    rng = random.Random(f"demo-{seed}-{split}")  # str seeds hash with sha512: stable across runs
    phrasing = random.Random(f"demo-{seed}-{split}-phrasing")
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
        caption = caption_for(objects, n_images, captions, phrasing)
        rows.append(_row(sample_id, task, prompt, caption, images, objects))
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
    # Canonical order whatever order the caption names them in: the ground truth is a set.
    row["objects"] = [_object_record(o) for o in sorted(objects, key=sort_key)]
    return row


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a demo jsonl file."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
