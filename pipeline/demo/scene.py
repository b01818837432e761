"""Synthetic scenes for the demo: sample objects on a 2x2 grid and render them as tiny RGB images.

The geometry is chosen for Qwen2.5-VL's vision tower: a 56x56 image is a 4x4 grid of 14-pixel
patches, and the 2x2 spatial merge turns each 28x28 cell into exactly one LLM image token. So every
object lives in exactly one image token, and "describe the image" is a per-token recognition task
plus reading order.

The look is tuned so a randomly initialised teacher learns every attribute within a few hundred CPU
steps (measured with a plain AdamW loop, 4-layer/128-wide text model, batch 16):

- objects are centred exactly in their cell, no jitter: a random patch projection is not shift
  invariant, so with +-2 px jitter one shape's features varied as much as shapes differ and shape
  stayed at chance after 600 steps;
- a dark outline carries the silhouette in the same pixel values whatever the fill colour (without
  it shape and colour are entangled: the shape mask is multiplied by the fill colour), and a mid-grey
  background keeps the outline from drowning the fill colour (on near-white, the outline's contrast
  dominated and colour was learned last or not at all once the vision tower trained).
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from .captions import COLOURS, POSITIONS, SHAPES, SIZES, DemoObject

IMAGE_SIZE = 56  # pixels per side; 4x4 patches of 14, 2x2 merged tokens
CELL = IMAGE_SIZE // 2
BACKGROUND = (120, 120, 120)
RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "green": (40, 165, 60),
    "blue": (45, 80, 215),
    "yellow": (230, 195, 30),
}
# Half-extent in pixels: large objects nearly fill their 28-pixel cell, small ones a quarter of it.
# Each cell's centre is the corner shared by its four patches, so every patch sees one quadrant.
HALF_EXTENT = {"large": 11, "small": 6}
OUTLINE = (25, 25, 25)
OUTLINE_WIDTH = 2


def sample_objects(rng: random.Random, image: int = 0, max_objects: int = 3) -> list[DemoObject]:
    """1..max_objects objects in distinct cells, uniformly over every attribute."""
    count = rng.randint(1, max_objects)
    cells = sorted(rng.sample(range(len(POSITIONS)), count))
    return [
        DemoObject(
            shape=rng.choice(SHAPES),
            colour=rng.choice(COLOURS),
            size=rng.choice(SIZES),
            position=POSITIONS[cell],
            image=image,
        )
        for cell in cells
    ]


def render(objects: list[DemoObject]) -> Image.Image:
    """A 56x56 RGB image of ``objects`` (their ``image`` field is ignored).

    PIL's rasteriser is deterministic, so the same objects always give the same pixels.
    """
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in objects:
        cell = POSITIONS.index(obj.position)
        cx = (cell % 2) * CELL + CELL // 2
        cy = (cell // 2) * CELL + CELL // 2
        r = HALF_EXTENT[obj.size]
        fill = RGB[obj.colour]
        box = (cx - r, cy - r, cx + r, cy + r)
        if obj.shape == "circle":
            draw.ellipse(box, fill=fill, outline=OUTLINE, width=OUTLINE_WIDTH)
        elif obj.shape == "square":
            draw.rectangle(box, fill=fill, outline=OUTLINE, width=OUTLINE_WIDTH)
        elif obj.shape == "triangle":
            corners = [(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)]
            draw.polygon(corners, fill=fill, outline=OUTLINE, width=OUTLINE_WIDTH)
        else:
            raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")
    return img
