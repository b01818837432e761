"""A teacher cache directory as one object: where every file of it lives and what its records say.

Layout (``docs/cache_format.md``)::

    <teacher_cache>/                  CacheDir
        resolved_config.yaml          the config the cache stage ran with
        <split>/                      SplitDir (train, val, or a file's split)
            manifest.json             Manifest: fingerprint, layout, shards, counts, generations, skips
            shard-rRR-NNNNN.arrow     the rows
            parts/rank-RR.json        one rank's record of its shards (merged into the manifest)
            parts/rank-RR.skips.jsonl         the rows a rank skipped, with reasons
            parts/rank-RR.superseded.jsonl    stored rows whose dataset row changed
            .writer.lock              held by the one writer
        .<split>.compacting/          a compaction's build directory, renamed over <split> when done

Code outside :mod:`pipeline.cache` asks these objects for a path or a recorded value; it never joins a
cache path or reads a manifest key itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.cache.format import MANIFEST_NAME, PARTS_DIR, SHARD_RE
from pipeline.errors import CacheFormatError, ConfigError

__all__ = ["RESOLVED_CONFIG_NAME", "CacheDir", "Manifest", "SplitDir", "read_json"]

RESOLVED_CONFIG_NAME = "resolved_config.yaml"


def read_json(path: Path) -> Any:
    """One of the cache's JSON records; an unreadable one is a ``CacheFormatError`` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CacheFormatError(f"{path}: unreadable ({err})") from err


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


def _records(value: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in value if isinstance(r, Mapping)] if isinstance(value, list) else []


@dataclass(frozen=True)
class Manifest:
    """A read-only view of a split's ``manifest.json``; a key a cache of an older version lacks reads
    as empty."""

    data: Mapping[str, Any]

    @property
    def fingerprint(self) -> dict[str, Any]:
        """What the cache's distributions depend on (teacher, tokenizer, encoding, k, temperature)."""
        return _mapping(self.data.get("fingerprint"))

    @property
    def encoding(self) -> dict[str, Any]:
        """The row encoder's settings the cache was built with."""
        return _mapping(self.fingerprint.get("encoding"))

    @property
    def placeholder_ids(self) -> dict[str, int]:
        """The image placeholder token ids of the encoding (name -> id)."""
        return {str(k): int(v) for k, v in _mapping(self.encoding.get("placeholder_ids")).items()}

    @property
    def layout(self) -> dict[str, Any]:
        return _mapping(self.data.get("layout"))

    @property
    def counts(self) -> dict[str, Any]:
        """``rows_in``, ``cached``, ``skipped``, ``skipped_by_reason``, ``targets``, tags ..."""
        return _mapping(self.data.get("counts"))

    @property
    def targets(self) -> int:
        """Supervised targets stored over the cached rows."""
        return int(self.counts.get("targets", 0) or 0)

    @property
    def written_responses(self) -> Any:
        """The teacher-written responses setting the cache was built with (None before it existed)."""
        return self.fingerprint.get("written_responses")

    @property
    def shards(self) -> list[dict[str, Any]]:
        """One record per shard: file name, rows, bytes, digest, tags."""
        return _records(self.data.get("shards"))

    @property
    def shard_bytes(self) -> int:
        return sum(int(s.get("bytes", 0)) for s in self.shards)

    @property
    def generations(self) -> list[dict[str, Any]]:
        """One record per run that added to the cache: rows in, reused, new, changed, skipped, dataset."""
        return _records(self.data.get("generations"))

    @property
    def last_generation(self) -> dict[str, Any]:
        gens = self.generations
        return gens[-1] if gens else {}

    @property
    def storage(self) -> dict[str, Any]:
        return _mapping(self.data.get("storage"))

    @property
    def superseded_versions(self) -> int:
        """Stored row versions no longer live (their dataset row changed); compaction drops them."""
        return int(self.storage.get("superseded", 0) or 0)

    @property
    def superseded(self) -> list[dict[str, Any]]:
        """The ``(sample_id, shard)`` records of those versions."""
        return _records(self.data.get("superseded"))

    @property
    def sources(self) -> dict[str, Any]:
        """Where the inputs were (dataset, tokenizer, config files): for the inspector, not the key."""
        return _mapping(self.data.get("sources"))

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """The skip records: sample id, reason, detail, generation, the row digest it was made for."""
        return _records(self.data.get("skipped"))

    def skip_digests(self) -> dict[str, str]:
        """sample_id -> the row digest each skip record was made for ("" when the record has none)."""
        return {
            r["sample_id"]: str(r.get("row_digest") or "")
            for r in self.skipped
            if isinstance(r.get("sample_id"), str)
        }


@dataclass(frozen=True)
class SplitDir:
    """One split of a cache directory: its files and records."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST_NAME

    @property
    def finished(self) -> bool:
        """A manifest is written when a cache stage finishes the split (and only then)."""
        return self.manifest_path.is_file()

    def manifest(self) -> Manifest:
        return Manifest(read_json(self.manifest_path))

    @property
    def parts(self) -> Path:
        return self.root / PARTS_DIR

    def part_path(self, rank: int) -> Path:
        return self.parts / f"rank-{rank:02d}.json"

    def skips_path(self, rank: int) -> Path:
        return self.parts / f"rank-{rank:02d}.skips.jsonl"

    def skip_logs(self) -> list[Path]:
        """Every rank's skip log, in rank order."""
        return sorted(self.parts.glob("rank-*.skips.jsonl"))

    def superseded_logs(self) -> list[Path]:
        """Every rank's superseded log, in rank order."""
        return sorted(self.parts.glob("rank-*.superseded.jsonl"))

    def superseded_path(self, rank: int) -> Path:
        return self.parts / f"rank-{rank:02d}.superseded.jsonl"

    @property
    def building_dir(self) -> Path:
        """Where a compaction of this split builds its new copy (``.<split>.compacting``, a sibling)."""
        return self.root.with_name(f".{self.root.name}.compacting")

    def shard_paths(self) -> list[Path]:
        """The complete (renamed) shard files, in name order."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if SHARD_RE.match(p.name))


@dataclass(frozen=True)
class CacheDir:
    """A teacher cache (``custom.teacher_cache``): one :class:`SplitDir` per split."""

    root: Path

    @classmethod
    def of(cls, cfg: Any) -> CacheDir:
        """The cache of ``cfg`` (a ``DistillConfig``: ``custom.teacher_cache``)."""
        if not cfg.custom.teacher_cache:
            raise ConfigError("custom.teacher_cache is not set")
        return cls(Path(cfg.custom.teacher_cache))

    def split(self, name: str) -> SplitDir:
        return SplitDir(self.root / name)

    def splits(self) -> list[str]:
        """The splits with a finished manifest, in name order."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / MANIFEST_NAME).is_file())

    @property
    def resolved_config(self) -> Path:
        return self.root / RESOLVED_CONFIG_NAME
