"""The teacher cache's on-disk format: names, the per-sample record, and the shard layout.

One shard is an Arrow IPC *file* (random access by record batch) with zstd-compressed buffers and
one row per sample. The top-k block is packed into byte planes (``binary`` columns): at k=64 the
packed block costs 133 bytes per supervised target where plain list columns holding the very same
decoded values cost 206 (Arrow IPC, zstd; measured). The exact packing is in ``docs/cache_format.md``
and :mod:`pipeline.cache.codec`; :func:`pipeline.cache.reader.export_plain` writes a plain copy.

This module knows nothing of models or torch.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.cache.quant import Quantizer
from pipeline.errors import CacheFormatError

FORMAT_NAME = "vlm-distill/teacher-cache"
# Bump on any change a version-1 reader would misread; readers refuse every other version.
FORMAT_VERSION = 1

QUANTIZED = "quantized"
FP32 = "fp32"
LOGPROB_ENCODINGS = (QUANTIZED, FP32)
DEFAULT_LOGPROB_ENCODING = QUANTIZED

MANIFEST_NAME = "manifest.json"
PARTS_DIR = "parts"  # per-rank partial manifests and durable skip logs
SHARD_RE = re.compile(r"^shard-r(\d{2,})-(\d{5,})\.arrow$")
META_KEY = b"vlm_distill.layout"  # Arrow schema metadata key holding the layout JSON
FINGERPRINT_KEY = b"vlm_distill.fingerprint"  # ... and the fingerprint: every shard names what it is for

# Mean KL(exact || decoded) the default quantiser is tuned for, per position, in nats. The step in
# sqrt(p) is sqrt(6 * KL_DESIGN / k): the high-resolution estimate of the KL of uniform steps in sqrt(p)
# is k * step^2 / 6, so the fidelity stays near KL_DESIGN whatever k is (measured: docs/cache_format.md).
# 6e-5 rather than closer to the 1e-4 target: values bunched near cell edges (a nearly uniform teacher)
# can triple the KL of a position, and 7.5e-5 saved only 0.8 B/target at k=64.
KL_DESIGN = 6e-5
MAX_TOP_K = 1024  # quantized; beyond, one-byte levels would need coarse cells above 16 steps wide
MAX_TOP_K_FP32 = 65534  # two-byte target ranks (65535 is the escape code)
# Above 254 the per-token target index needs two bytes (255 would collide with the escape code).
_ONE_BYTE_K = 254


def shard_name(rank: int, index: int) -> str:
    """``shard-r{rank:02d}-{index:05d}.arrow``; every writer (rank) numbers its own shards."""
    return f"shard-r{rank:02d}-{index:05d}.arrow"


def quant_step_for(top_k: int) -> float:
    """Step of the default quantiser in the sqrt(p) domain for ``top_k`` entries (rounded to 6 digits
    so the value in the manifest reads cleanly and round-trips exactly through JSON)."""
    return float(f"{math.sqrt(6.0 * KL_DESIGN / top_k):.6g}")


@dataclass
class CachedSample:
    """The teacher's view of one encoded sample: one entry per supervised target.

    ``n`` is the number of targets (positions ``j >= 1`` with ``labels[j] != -100``), ``k`` the cache's top-k.
    """

    sample_id: str
    encoding_hash: str  # hex digest of input_ids, label mask and image grid
    num_tokens: int  # len(input_ids) of the encoded sample
    positions: np.ndarray  # int64 [n] target positions j, ascending
    target_ids: np.ndarray  # int64 [n] labels[j]
    topk_ids: np.ndarray  # int64 [n, k] teacher's top-k ids at position j-1, by descending logprob
    topk_logprobs: np.ndarray  # float32 [n, k]
    tail_logprobs: np.ndarray  # float32 [n] log of the mass outside the top-k; -inf when none
    target_logprobs: np.ndarray  # float32 [n] teacher logprob of target_ids

    @property
    def num_targets(self) -> int:
        return int(self.positions.shape[0])

    def validate(self, top_k: int, vocab_size: int) -> None:
        """Raise ``ValueError`` naming the field if shapes, dtypes or values break the contract."""
        sid = self.sample_id
        if not isinstance(sid, str) or not sid:
            raise ValueError(f"sample_id must be a non-empty str, got {sid!r}")
        if not isinstance(self.encoding_hash, str):
            raise ValueError(f"sample {sid!r}: encoding_hash must be a hex str")
        n = self.num_targets
        shapes = {
            "positions": (n,),
            "target_ids": (n,),
            "topk_ids": (n, top_k),
            "topk_logprobs": (n, top_k),
            "tail_logprobs": (n,),
            "target_logprobs": (n,),
        }
        for name, shape in shapes.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray) or arr.shape != shape:
                got = getattr(arr, "shape", type(arr).__name__)
                raise ValueError(f"sample {sid!r}: {name} must be an ndarray of shape {shape}, got {got}")
            kind = "f" if "logprob" in name else "iu"
            if arr.dtype.kind not in kind:
                raise ValueError(f"sample {sid!r}: {name} has dtype {arr.dtype}")
        if n and (self.positions[0] < 1 or np.any(np.diff(self.positions) <= 0)):
            raise ValueError(f"sample {sid!r}: positions must be >= 1 and strictly ascending")
        if n and self.positions[-1] >= self.num_tokens:
            raise ValueError(
                f"sample {sid!r}: position {int(self.positions[-1])} >= num_tokens {self.num_tokens}"
            )
        for name in ("topk_ids", "target_ids"):
            arr = getattr(self, name)
            if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
                raise ValueError(f"sample {sid!r}: {name} outside [0, {vocab_size})")
        for name in ("topk_logprobs", "tail_logprobs", "target_logprobs"):
            arr = getattr(self, name)
            if np.isnan(arr).any() or np.isposinf(arr).any():
                raise ValueError(f"sample {sid!r}: {name} holds NaN or +inf")


@dataclass(frozen=True)
class Layout:
    """How one cache packs its top-k block; stored in every shard's schema metadata and the manifest.

    ``id_groups`` are entry-column boundaries (k/64, k/16, 3k/16, k/2): the byte planes of id gaps are
    split into these groups so zstd fits one entropy table per group (gap statistics drift with the
    column: -5 B/token at k=64).
    ``level_classes`` are tail-level boundaries: the levels of a position go to the plane of its class,
    because how peaked a position is (its tail mass) predicts its levels (-7 B/token at k=64).
    """

    logprob_encoding: str
    top_k: int
    vocab_size: int
    id_bytes: int  # bytes per stored id (fp32) or id gap (quantized; larger gaps are escaped)
    id_groups: tuple[int, ...]
    target_index_bytes: int  # 1 for k <= 254, else 2
    quant_step: float | None = None  # step in sqrt(p) (pipeline.cache.quant); None for fp32
    quant_log_cells: int = 0  # 4-nat cells below (step/2)^2
    quant_fine: int = 0  # cells of one step in sqrt(p)
    quant_coarse: int = 1  # width, in steps, of the cells above the fine ones
    level_classes: tuple[int, ...] = ()
    format_version: int = field(default=FORMAT_VERSION)

    @classmethod
    def create(cls, top_k: int, vocab_size: int, logprob_encoding: str = DEFAULT_LOGPROB_ENCODING) -> Layout:
        if logprob_encoding not in LOGPROB_ENCODINGS:
            raise ValueError(f"logprob_encoding must be one of {LOGPROB_ENCODINGS}, got {logprob_encoding!r}")
        limit = MAX_TOP_K if logprob_encoding == QUANTIZED else MAX_TOP_K_FP32
        if not 1 <= top_k <= limit:
            raise ValueError(f"top_k must be in [1, {limit}] for {logprob_encoding}, got {top_k}")
        if not 2 <= vocab_size < 2**31 or vocab_size < top_k:
            raise ValueError(f"vocab_size must be in [max(2, top_k), 2**31), got {vocab_size}")
        full_bytes = -(-(vocab_size - 1).bit_length() // 8)
        index_bytes = 1 if top_k <= _ONE_BYTE_K else 2
        if logprob_encoding == FP32:
            return cls(FP32, top_k, vocab_size, full_bytes, (0, top_k), index_bytes)
        q = Quantizer.for_step(quant_step_for(top_k))
        groups = tuple(sorted({0, top_k, *(max(1, top_k * f // 64) for f in (1, 4, 12, 32))}))
        classes = tuple(sorted({int(e) for e in q.levels(np.log(np.array(CLASS_TAIL_MASS)))} - {0}))
        return cls(
            QUANTIZED,
            top_k,
            vocab_size,
            min(2, full_bytes),
            groups,
            index_bytes,
            q.step,
            q.log_cells,
            q.fine,
            q.coarse,
            classes,
        )

    @property
    def quantizer(self) -> Quantizer:
        assert self.quant_step is not None, "fp32 layouts have no quantiser"
        return Quantizer(self.quant_step, self.quant_log_cells, self.quant_fine, self.quant_coarse)

    @property
    def quantized(self) -> bool:
        return self.logprob_encoding == QUANTIZED

    @property
    def escape_index(self) -> int:
        """Target rank meaning "target not implied by the top-k": its id and logprob are stored apart."""
        return 2 ** (8 * self.target_index_bytes) - 1

    @property
    def escape_gap(self) -> int:
        """Stored id gap meaning "the gap is the next value of ``escape_gaps``" (quantized only)."""
        return 2 ** (8 * self.id_bytes) - 1

    def plane_columns(self) -> list[str]:
        """Names of the packed ``binary`` columns, in schema order."""
        cols = [f"topk_id_g{g}_b{b}" for g in range(len(self.id_groups) - 1) for b in range(self.id_bytes)]
        if self.quantized:
            cols += [f"topk_level_c{c}" for c in range(len(self.level_classes) + 1)]
            cols += ["tail_level"]
        else:
            cols += [f"topk_logprob_b{b}" for b in range(4)] + [f"tail_logprob_b{b}" for b in range(4)]
        cols += [f"target_rank_b{b}" for b in range(self.target_index_bytes)]
        return cols

    def schema(self, fingerprint: dict[str, Any] | None = None) -> pa.Schema:
        fields = [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("encoding_hash", pa.string(), nullable=False),
            pa.field("num_tokens", pa.int32(), nullable=False),
            pa.field("num_targets", pa.int32(), nullable=False),
            pa.field("positions", pa.list_(pa.int32()), nullable=False),
            pa.field("escape_target_ids", pa.list_(pa.int32()), nullable=False),
            pa.field("escape_target_logprobs", pa.list_(pa.float32()), nullable=False),
            pa.field("escape_gaps", pa.list_(pa.int32()), nullable=False),
        ]
        fields += [pa.field(name, pa.binary(), nullable=False) for name in self.plane_columns()]
        metadata = {META_KEY: self.to_json().encode()}
        if fingerprint is not None:
            metadata[FINGERPRINT_KEY] = json.dumps(fingerprint, sort_keys=True).encode()
        return pa.schema(fields, metadata=metadata)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["id_groups"], d["level_classes"] = list(self.id_groups), list(self.level_classes)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any, where: str = "cache") -> Layout:
        version = d.get("format_version") if isinstance(d, dict) else None
        if version != FORMAT_VERSION:
            raise CacheFormatError(
                f"{where}: cache format version {version!r}, this reader reads version {FORMAT_VERSION} "
                "(rebuild the cache with this version of the pipeline)"
            )
        try:
            layout = cls(
                **{**d, "id_groups": tuple(d["id_groups"]), "level_classes": tuple(d["level_classes"])}
            )
            expected = cls.create(layout.top_k, layout.vocab_size, layout.logprob_encoding)
        except (TypeError, KeyError, ValueError) as err:
            raise CacheFormatError(f"{where}: unreadable layout {d!r}: {err}") from err
        if layout != expected:
            raise CacheFormatError(
                f"{where}: layout {d!r} is not the one this reader packs ({expected.to_dict()})"
            )
        return layout

    @classmethod
    def from_schema(cls, schema: pa.Schema, where: str) -> Layout:
        raw = (schema.metadata or {}).get(META_KEY)
        if raw is None:
            raise CacheFormatError(f"{where}: not a teacher-cache shard (no {META_KEY.decode()} metadata)")
        try:
            d = json.loads(raw)
        except ValueError as err:
            raise CacheFormatError(f"{where}: corrupt layout metadata: {err}") from err
        return cls.from_dict(d, where)


# Tail masses separating the classes whose levels get separate planes (see Layout).
CLASS_TAIL_MASS = (1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1)
