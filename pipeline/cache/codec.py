"""Packing of the top-k block into byte planes, and its vectorised decoding.

Default (``quantized``) packing of one sample with ``n`` targets (token-major, little-endian):

- ids are sorted ascending per position and delta coded (first delta from 0). The deltas of entry
  columns ``id_groups[g]:id_groups[g+1]`` go to ``topk_id_g{g}_b{byte}``, one byte of each delta per plane.
  Deltas of ``escape_gap`` or more are stored as ``escape_gap`` and their value, in (position, column)
  order, in the ``escape_gaps`` list. A sorted set costs ~93 B at k=64 on the benchmark where ids in
  rank order cost ~131 B: the order is carried by the values, which need no permutation.
- values are one-byte levels (:class:`pipeline.cache.quant.Quantizer`) in the same id order.
  The k levels of a position go to ``topk_level_c{c}``, ``c`` the class of its tail level
  (``level_classes``); the tail's level to ``tail_level``.
- ``target_rank_b*``: the target's rank in the decoded order, or ``escape_index`` when the target is not
  in the top-k or its logprob is not bitwise the top-k entry's; escaped targets keep their id and float32
  logprob in the ``escape_target_*`` lists.

``fp32`` packing: ids in the given (rank) order, not delta coded, one group, all their bytes; values as
the four bytes of float32 in ``topk_logprob_b*`` and ``tail_logprob_b*``. It is bit-exact, ties included.

Decoding sorts each position by (level descending, id ascending), so the quantized top-k comes back by
descending logprob with ties broken by id. Work is done in chunks that fit in L2 with reused scratch
buffers: fresh multi-megabyte temporaries cost more in page faults than the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.cache.format import CachedSample, Layout


@dataclass
class Decoded:
    """A decoded run of targets, concatenated over samples; shapes with N targets and top-k k."""

    topk_ids: np.ndarray  # int64 [N, k], by descending logprob
    topk_logprobs: np.ndarray  # float32 [N, k]
    tail_logprobs: np.ndarray  # float32 [N]
    target_ids: np.ndarray  # int64 [N]
    target_logprobs: np.ndarray  # float32 [N]


def _planes(values: np.ndarray, nbytes: int) -> list[bytes]:
    """Little-endian byte planes of a non-negative integer array (flattened in C order)."""
    v = np.ascontiguousarray(values, dtype=np.uint32).reshape(-1)
    as_bytes = v.view(np.uint8).reshape(-1, 4)
    return [np.ascontiguousarray(as_bytes[:, b]).tobytes() for b in range(nbytes)]


def encode_sample(sample: CachedSample, layout: Layout) -> dict[str, object]:
    """Column values of one sample's row: ``bytes`` for plane columns, arrays for list columns.

    ``sample`` must already be validated (:meth:`CachedSample.validate`).
    """
    k = layout.top_k
    ids = sample.topk_ids.astype(np.int64, copy=False)
    lps = sample.topk_logprobs.astype(np.float32, copy=False)
    targets = sample.target_ids.astype(np.int64, copy=False)
    target_lps = sample.target_logprobs.astype(np.float32, copy=False)
    n = ids.shape[0]
    out: dict[str, object] = {}

    # Where the target sits in the given order, and whether its logprob is bitwise that entry's.
    match = ids == targets[:, None]
    given_col = match.argmax(axis=1)
    entry_lp = lps[np.arange(n), given_col]
    implied = match.any(axis=1) & (entry_lp.view(np.uint32) == target_lps.view(np.uint32))

    if layout.quantized:
        quantizer = layout.quantizer
        levels = quantizer.levels(lps).astype(np.int64)
        key = np.sort((ids << 8) | levels, axis=1)  # one sort carries each level along with its id
        stored_ids, stored_levels = key >> 8, key & 0xFF
        gaps = np.diff(stored_ids, axis=1, prepend=0)
        if k > 1 and n and (gaps[:, 1:] == 0).any():
            raise ValueError(f"sample {sample.sample_id!r}: duplicate ids within a position's top-k")
        escaped = gaps >= layout.escape_gap
        out["escape_gaps"] = gaps[escaped].astype(np.int32)
        gaps[escaped] = layout.escape_gap
        for g, (a, b) in enumerate(zip(layout.id_groups[:-1], layout.id_groups[1:], strict=True)):
            for byte, plane in enumerate(_planes(gaps[:, a:b], layout.id_bytes)):
                out[f"topk_id_g{g}_b{byte}"] = plane
        tail = quantizer.levels(sample.tail_logprobs)
        out["tail_level"] = tail.tobytes()
        cls = np.searchsorted(np.array(layout.level_classes), tail, side="right")
        rows = stored_levels.astype(np.uint8)
        for c in range(len(layout.level_classes) + 1):
            out[f"topk_level_c{c}"] = rows[cls == c].tobytes()
        # Rank in the decoded order (level descending, then id ascending).
        t_level = levels[np.arange(n), given_col][:, None]
        rank = ((levels > t_level) | ((levels == t_level) & (ids < targets[:, None]))).sum(axis=1)
    else:
        rank = given_col
        out["escape_gaps"] = np.empty(0, np.int32)
        for byte, plane in enumerate(_planes(ids, layout.id_bytes)):
            out[f"topk_id_g0_b{byte}"] = plane
        for byte, plane in enumerate(_planes(lps.view(np.uint32), 4)):
            out[f"topk_logprob_b{byte}"] = plane
        tail32 = sample.tail_logprobs.astype(np.float32, copy=False)
        for byte, plane in enumerate(_planes(tail32.view(np.uint32), 4)):
            out[f"tail_logprob_b{byte}"] = plane
    index = np.where(implied, rank, layout.escape_index)
    for byte, plane in enumerate(_planes(index, layout.target_index_bytes)):
        out[f"target_rank_b{byte}"] = plane
    out["escape_target_ids"] = targets[~implied].astype(np.int32)
    out["escape_target_logprobs"] = target_lps[~implied]
    return out


class Decoder:
    """Decodes concatenated plane bytes of many samples; holds reusable scratch (not thread-safe)."""

    def __init__(self, layout: Layout, chunk_tokens: int | None = None):
        self.layout = layout
        k = layout.top_k
        # ~256 KiB per int32 scratch array: the handful in use stay in a 1-2 MiB L2.
        self.chunk = chunk_tokens or max(64, 2**16 // k)
        self._gaps = np.zeros((self.chunk, k, 4), np.uint8)  # bytes above id_bytes stay 0
        self._ids = np.empty((self.chunk, k), np.int32)
        if layout.quantized:
            self.table = layout.quantizer.table()
            self.max_level = len(self.table) - 1
            self.id_bits = (layout.vocab_size - 1).bit_length()
            wide = self.id_bits + self.max_level.bit_length() > 31
            self._key = np.empty((self.chunk, k), np.int64 if wide else np.int32)
            # Indexed by (max_level - level), the quantity sorted ascending. Padded with NaN to 256 so a
            # level above max_level (a writer bug; corruption fails the checksum) wraps to NaN, not to a value.
            self.rtable = np.full(256, np.nan, np.float32)
            self.rtable[: self.max_level + 1] = self.table[::-1]
            self.class_of = np.searchsorted(np.array(layout.level_classes), np.arange(256), side="right")
            self.class_of = self.class_of.astype(np.uint8)

    def decode(self, planes: dict[str, np.ndarray]) -> Decoded:
        """Decode N targets from ``planes`` (uint8 arrays and the escape lists, samples concatenated)."""
        lay, k = self.layout, self.layout.top_k
        n = len(planes["target_rank_b0"])
        out = Decoded(
            topk_ids=np.empty((n, k), np.int64),
            topk_logprobs=np.empty((n, k), np.float32),
            tail_logprobs=np.empty(n, np.float32),
            target_ids=np.empty(n, np.int64),
            target_logprobs=np.empty(n, np.float32),
        )
        rank = planes["target_rank_b0"].astype(np.intp)
        if lay.target_index_bytes == 2:
            rank |= planes["target_rank_b1"].astype(np.intp) << 8
        escaped = rank == lay.escape_index
        rank[escaped] = 0
        if lay.quantized:
            tail = planes["tail_level"]
            np.take(self.table, tail, out=out.tail_logprobs)
            levels, source = self._level_rows(planes, tail, n)
            gaps = planes["escape_gaps"]
            for t0 in range(0, n, self.chunk):
                t1 = min(n, t0 + self.chunk)
                used = self._decode_quantized(planes, t0, t1, levels, source, gaps, out)
                gaps = gaps[used:]
        else:
            _assemble(out.tail_logprobs.view(np.uint8).reshape(n, 4), planes, "tail_logprob", 0, n, 4)
            for t0 in range(0, n, self.chunk):
                self._decode_fp32(planes, t0, min(n, t0 + self.chunk), out)
        rows = np.arange(n)
        out.target_ids[:] = out.topk_ids[rows, rank]
        out.target_logprobs[:] = out.topk_logprobs[rows, rank]
        out.target_ids[escaped] = planes["escape_target_ids"]
        out.target_logprobs[escaped] = planes["escape_target_logprobs"]
        return out

    def _level_rows(
        self, planes: dict[str, np.ndarray], tail: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """All positions' level rows, class-major, and each position's row in it (None: identity)."""
        k, n_classes = self.layout.top_k, len(self.layout.level_classes) + 1
        parts = [planes[f"topk_level_c{c}"] for c in range(n_classes)]
        nonempty = [p for p in parts if len(p)]
        if len(nonempty) <= 1:  # one class present: rows are already in position order
            return (nonempty[0] if nonempty else np.empty(0, np.uint8)).reshape(n, k), None
        cls = self.class_of[tail]
        source = np.empty(n, np.intp)
        source[np.argsort(cls, kind="stable")] = np.arange(n)
        return np.concatenate(parts).reshape(n, k), source

    def _assemble_ids(self, planes: dict[str, np.ndarray], t0: int, t1: int) -> np.ndarray:
        """int32 [c, k] view of scratch holding the stored ids or gaps of positions t0:t1."""
        c, lay = t1 - t0, self.layout
        for g, (a, b) in enumerate(zip(lay.id_groups[:-1], lay.id_groups[1:], strict=True)):
            w = b - a
            for byte in range(lay.id_bytes):
                src = planes[f"topk_id_g{g}_b{byte}"][t0 * w : t1 * w].reshape(c, w)
                self._gaps[:c, a:b, byte] = src
        return self._gaps[:c].view(np.int32).reshape(c, lay.top_k)

    def _decode_quantized(
        self,
        planes: dict[str, np.ndarray],
        t0: int,
        t1: int,
        all_levels: np.ndarray,
        source: np.ndarray | None,
        escape_gaps: np.ndarray,
        out: Decoded,
    ) -> int:
        """Decode positions t0:t1 into ``out``; returns how many escaped gaps they used."""
        c = t1 - t0
        gaps = self._assemble_ids(planes, t0, t1)
        ids = self._ids[:c]
        np.cumsum(gaps, axis=1, out=ids)
        used = 0
        if len(escape_gaps):  # rare (a gap >= 65535 needs a sparse top-k); the scratch stays 2-byte
            where = np.flatnonzero(gaps == self.layout.escape_gap)
            used = len(where)
            correction = np.zeros((c, self.layout.top_k), np.int32)
            correction.reshape(-1)[where] = escape_gaps[:used] - self.layout.escape_gap
            ids += np.cumsum(correction, axis=1, dtype=np.int32)
        levels = all_levels[t0:t1] if source is None else all_levels[source[t0:t1]]
        key = self._key[:c]
        # Sorting (max_level - level) << id_bits | id orders by descending level, then ascending id,
        # and carries the id along: no argsort, no gather.
        np.subtract(self.max_level, levels, out=key, dtype=key.dtype)
        np.left_shift(key, self.id_bits, out=key)
        np.bitwise_or(key, ids, out=key)
        key.sort(axis=1)
        np.bitwise_and(key, (1 << self.id_bits) - 1, out=out.topk_ids[t0:t1])
        np.right_shift(key, self.id_bits, out=key)
        np.take(self.rtable, key, out=out.topk_logprobs[t0:t1], mode="wrap")  # wrap: no bounds pass
        return used

    def _decode_fp32(self, planes: dict[str, np.ndarray], t0: int, t1: int, out: Decoded) -> None:
        c, k = t1 - t0, self.layout.top_k
        out.topk_ids[t0:t1] = self._assemble_ids(planes, t0, t1)
        lps = out.topk_logprobs[t0:t1]
        _assemble(lps.view(np.uint8).reshape(c, k, 4), planes, "topk_logprob", t0, t1, 4, k)


def _assemble(
    dst: np.ndarray, planes: dict[str, np.ndarray], prefix: str, t0: int, t1: int, nbytes: int, width: int = 1
) -> None:
    """Interleave ``nbytes`` planes ``{prefix}_b{i}`` of rows ``t0:t1`` into ``dst`` ``[..., nbytes]`` uint8."""
    for byte in range(nbytes):
        src = planes[f"{prefix}_b{byte}"][t0 * width : t1 * width]
        dst[..., byte] = src.reshape(dst.shape[:-1])
