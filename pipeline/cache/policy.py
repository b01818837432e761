"""THE cache opener: a split directory under one explicit validation policy.

Model-free like the rest of ``pipeline/cache/``: a caller that validates against a fingerprint builds
it and passes it in (``pipeline.splits.open_split_cache`` does, from a config).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

from pipeline.cache.format import MANIFEST_NAME
from pipeline.cache.reader import CacheReader
from pipeline.errors import CacheFormatError, CacheMismatchError


class CachePolicy(enum.Enum):
    """How much of a cache is checked when it is opened (checksums are always verified).

    ``FINGERPRINT``: the whole fingerprint this config would produce (teacher weights, tokenizer,
    template, dataset, k, temperature): training, which must reproduce the cache exactly.
    ``ENCODING``: the loss temperature on open, then every row's encoding hash as it is used:
    evaluation, which never loads the teacher and so cannot hash its weights.
    ``FORMAT``: the format alone (checksums, layout, shard fingerprints): inspection of any cache.
    """

    FINGERPRINT = "fingerprint"
    ENCODING = "encoding"
    FORMAT = "format"


def open_cache_dir(
    root: str | Path,
    policy: CachePolicy = CachePolicy.FORMAT,
    *,
    expected_fingerprint: dict[str, Any] | None = None,
    loss_temperature: float | None = None,
) -> CacheReader:
    """A reader over the split directory ``root`` under ``policy``.

    ``FINGERPRINT`` needs ``expected_fingerprint``; ``ENCODING`` checks ``loss_temperature`` (when
    given) against the cache's. A directory that holds splits but no manifest of its own gets a hint.
    """
    root = Path(root)
    if not (root / MANIFEST_NAME).is_file():
        splits = (
            sorted(p.name for p in root.iterdir() if (p / MANIFEST_NAME).is_file()) if root.is_dir() else []
        )
        hint = f" (it holds splits {splits}: pass e.g. {root / splits[0]})" if splits else ""
        raise CacheFormatError(f"{root}: no {MANIFEST_NAME}, not a finished cache split{hint}")
    if policy is CachePolicy.FINGERPRINT:
        if expected_fingerprint is None:
            raise ValueError("the fingerprint policy needs the fingerprint the run would produce")
        return CacheReader(root, expected_fingerprint=expected_fingerprint)
    reader = CacheReader(root)
    if policy is CachePolicy.ENCODING and loss_temperature is not None:
        cached_t = reader.manifest["fingerprint"].get("loss_temperature")
        if cached_t is not None and float(cached_t) != float(loss_temperature):
            raise CacheMismatchError(
                f"{root}: cache built at loss_temperature {cached_t}, config says {loss_temperature}",
                {"loss_temperature": (loss_temperature, cached_t)},
            )
    return reader
