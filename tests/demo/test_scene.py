"""Scene sampling and rendering: every object stays inside the one image token its cell maps to."""

from __future__ import annotations

import random

from PIL import Image

from pipeline.demo.captions import COLOURS, POSITIONS, SIZES
from pipeline.demo.scene import BACKGROUND, CELL, HALF_EXTENT, IMAGE_SIZE, RGB, render, sample_objects


def _cell_pixels(image: Image.Image, cell: int) -> set[object]:
    x0, y0 = (cell % 2) * CELL, (cell // 2) * CELL
    return {image.getpixel((x, y)) for x in range(x0, x0 + CELL) for y in range(y0, y0 + CELL)}


def test_rendering_tables_cover_the_vocabulary() -> None:
    assert set(RGB) == set(COLOURS)
    assert set(HALF_EXTENT) == set(SIZES)
    # An object plus its outline must fit inside its 28-pixel cell (one merged LLM token).
    assert 2 * max(HALF_EXTENT.values()) + 1 < CELL


def test_objects_stay_in_their_cells() -> None:
    rng = random.Random(0)
    for _ in range(50):
        objects = sample_objects(rng)
        assert 1 <= len(objects) <= 3
        assert len({o.position for o in objects}) == len(objects)
        image = render(objects)
        assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
        occupied = {POSITIONS.index(o.position): o for o in objects}
        for cell in range(len(POSITIONS)):
            pixels = _cell_pixels(image, cell)
            if cell in occupied:
                assert RGB[occupied[cell].colour] in pixels
            else:
                assert pixels == {BACKGROUND}


def test_render_is_deterministic() -> None:
    objects = sample_objects(random.Random(3))
    assert render(objects).tobytes() == render(objects).tobytes()
