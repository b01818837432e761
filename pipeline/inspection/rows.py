"""What the report shows beside one cached row's tokens: its images, its visual tokens and grid, and the
encoded sequence around the supervised targets (the prompt context, greyed).

With a row encoder (from ``--config`` or the config recorded at cache time) the row is re-encoded and
every position of ``input_ids`` is shown: supervised targets from the cache, the rest as context, runs
of image placeholders collapsed into one marker. The re-encoding is compared with the cache by its
encoding hash, so a row that no longer encodes as it was cached is flagged rather than silently shown.
Without an encoder the dataset row's own text stands in for the context.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any

from pipeline.cache.format import CachedSample
from pipeline.errors import DistillError

THUMB_PX = 168  # thumbnails are scaled (nearest neighbour when enlarging) to about this many pixels wide


@dataclass
class RowView:
    """Everything shown above one row's tokens.

    ``thumbs``: PNG data URIs, one per image; ``image_sizes``: (width, height) on disk;
    ``grids``: ``image_grid_thw`` rows (t, h, w) per image, empty without re-encoding;
    ``visual_tokens``: placeholder tokens in ``input_ids`` (None without re-encoding);
    ``input_ids``: the re-encoded ids (None without); ``hash_matches``: re-encoding hash == cache's
    (None without); ``prompt_text``: the dataset row's non-assistant text (fallback context);
    ``problems``: why something is missing.
    """

    thumbs: list[str] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    grids: list[list[int]] = field(default_factory=list)
    visual_tokens: int | None = None
    input_ids: list[int] | None = None
    hash_matches: bool | None = None
    prompt_text: str = ""
    problems: list[str] = field(default_factory=list)


def thumbnail(path: str, px: int = THUMB_PX) -> tuple[str, tuple[int, int]]:
    """(PNG data URI, original (width, height)) of the image at ``path``, scaled to about ``px`` wide.

    Small images (the demo's are 56x56) are enlarged by an integer factor with nearest-neighbour
    resampling so every source pixel stays a crisp square; large ones are shrunk.
    """
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
    w, h = rgb.size
    if max(w, h) < px:
        f = max(1, px // max(w, h))
        shown = rgb.resize((w * f, h * f), Image.Resampling.NEAREST)
    else:
        shown = rgb.copy()
        shown.thumbnail((px, px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    shown.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii"), (w, h)


def row_view(sample: CachedSample, row: Any, encoder: Any, placeholder_ids: dict[str, int]) -> RowView:
    """The :class:`RowView` of ``sample`` from its dataset ``row`` (None: not found) and ``encoder``.

    A teacher-written row is shown (and re-encoded) as the cache encoded it: with the teacher's response.
    """
    from pipeline.binding import as_cached

    view = RowView()
    if row is None:
        view.problems.append("row not in the dataset files found: no images or context")
        return view
    row = as_cached(row, sample)
    for path in row.images:
        try:
            uri, size = thumbnail(path)
        except (OSError, ValueError) as exc:
            view.problems.append(f"image {path}: {type(exc).__name__}: {exc}")
            continue
        view.thumbs.append(uri)
        view.image_sizes.append(size)
    view.prompt_text = "\n".join(
        f"{m.get('role')}: {m.get('content')}" for m in row.messages[:-1] if isinstance(m, dict)
    )
    if encoder is None:
        return view
    try:
        enc = encoder.encode(row)
    except DistillError as exc:
        view.problems.append(f"no longer encodes: {exc}")
        return view
    ids = [int(t) for t in enc.inputs["input_ids"]]
    grid = enc.inputs.get("image_grid_thw")
    view.input_ids = ids
    view.grids = [[int(v) for v in g] for g in (grid.tolist() if hasattr(grid, "tolist") else grid or [])]
    image_id = placeholder_ids.get("image_token_id")
    view.visual_tokens = sum(t == image_id for t in ids) if image_id is not None else None
    view.hash_matches = enc.encoding_hash == sample.encoding_hash
    if not view.hash_matches:
        view.problems.append(
            "re-encoded now, this row hashes differently from the cache: context may not line up"
        )
    return view
