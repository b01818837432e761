"""The tested dependency set, and a runtime check that names an untested version.

Behaviour that depends on a version is an explicit check here, never ``hasattr`` guessing.
"""

from __future__ import annotations

import warnings
from importlib import metadata

# Major.minor series this project is tested against (constraints.txt pins the exact set).
TESTED = {
    "ms-swift": "4.6",
    "transformers": "5.19",
    "trl": "0.29",
    "peft": "0.20",
    "torch": "2.14",
}


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def untested_versions() -> dict[str, tuple[str, str | None]]:
    """Return ``{dist: (tested_series, installed)}`` for every dist outside its tested series."""
    out: dict[str, tuple[str, str | None]] = {}
    for dist, series in TESTED.items():
        found = installed_version(dist)
        if found is None or not (found == series or found.startswith(series + ".")):
            out[dist] = (series, found)
    return out


def check_versions(strict: bool = False) -> None:
    """Warn (or raise, when ``strict``) naming each library outside the tested set."""
    bad = untested_versions()
    if not bad:
        return
    text = "; ".join(
        f"{d} {found or 'not installed'} (tested: {series}.x)" for d, (series, found) in bad.items()
    )
    msg = f"untested library versions: {text}. Install the pinned set: pip install -c constraints.txt -e ."
    if strict:
        from pipeline.errors import DistillError

        raise DistillError(msg)
    warnings.warn(msg, stacklevel=2)


def encoding_library_versions() -> dict[str, str | None]:
    """Versions of the libraries that shape encoding (part of the cache fingerprint)."""
    return {
        d: installed_version(d) for d in ("ms-swift", "transformers", "tokenizers", "qwen-vl-utils", "pillow")
    }
