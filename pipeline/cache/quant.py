"""The default quantiser: one-byte levels of a probability, uniform in sqrt(p) where it matters.

Cells, from the bottom (``s`` the step, ``t = sqrt(p)``):

- level 0: exactly zero probability (log-prob ``-inf``);
- ``log_cells`` cells of 4 nats in log p below ``p0 = (s/2)^2``, the lowest one open below. 4 nats is
  the slope of uniform steps in sqrt(p) at ``p0`` continued downwards: a position's many tiny entries keep
  their relative size instead of all decoding to ``s^2/12`` (which cost up to ~3e-5 nats per position on
  a peaked teacher, measured);
- ``fine`` cells ``[(c - 1/2) s, (c + 1/2) s)`` in t, ``c = 1..fine``: the Fisher metric of the simplex
  is flat in sqrt(p), so equal steps there spend the KL budget evenly (KL ~ k s^2 / 6);
- above ``t0 = (fine + 1/2) s``, cells ``coarse * s`` wide up to 1, when the fine cells alone would need
  more than 255 levels (k > ~26). They hold the one or two entries per position with p above ~0.01.

Every level decodes to the mean of p over its cell, with t uniform in a sqrt cell
(``(a^2 + ab + b^2) / 3``) and log p uniform in a log cell (``(b - a) / 4``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_LEVEL = 255  # levels are one byte
LOG_STEP = 4.0  # nats per log cell: 2 s / sqrt(p0) with p0 = (s/2)^2
LOG_FLOOR = math.log(1e-14)  # the log cells reach at least this low; below, the lowest cell


@dataclass(frozen=True)
class Quantizer:
    step: float
    log_cells: int
    fine: int
    coarse: int

    @classmethod
    def for_step(cls, step: float) -> Quantizer:
        """The cells for ``step``: log cells down to 1e-30, fine cells, and the smallest coarse factor
        that keeps every p below 0.01 in fine cells (2 at k=64, 3 at k=128, 4 at k=256)."""
        log_cells = math.ceil((2 * math.log(step / 2) - LOG_FLOOR) / LOG_STEP)
        room = MAX_LEVEL - log_cells
        fine = round(1.0 / step)  # (fine + 1/2) s >= 1: no coarse cells needed
        if fine <= room:
            return cls(step, log_cells, fine, 1)
        for coarse in range(2, 64):
            fits = [
                n for n in range(1, room) if n + math.ceil((1 - (n + 0.5) * step) / (coarse * step)) <= room
            ]
            if fits and (max(fits) + 0.5) * step >= 0.1:
                return cls(step, log_cells, max(fits), coarse)
        raise ValueError(f"quantiser step {step} too fine for one-byte levels")

    @property
    def t0(self) -> float:
        return (self.fine + 0.5) * self.step

    @property
    def n_coarse(self) -> int:
        return max(0, math.ceil((1.0 - self.t0) / (self.coarse * self.step)))

    @property
    def max_level(self) -> int:
        return self.log_cells + self.fine + self.n_coarse

    @property
    def max_width(self) -> float:
        """Widest cell in sqrt(p) among the sqrt cells: the per-entry error bound above p0."""
        return self.step * (self.coarse if self.n_coarse else 1)

    def _cells(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Log cells' log-p bounds and sqrt cells' t bounds (float64), in level order."""
        s = self.step
        lp0 = 2 * math.log(s / 2)
        m = np.arange(self.log_cells, dtype=np.float64)
        la, lb = lp0 - LOG_STEP * (self.log_cells - m), lp0 - LOG_STEP * (self.log_cells - m - 1)
        c = np.arange(1, self.fine + 1, dtype=np.float64)
        a, b = (c - 0.5) * s, (c + 0.5) * s
        if self.n_coarse:
            j = np.arange(self.n_coarse, dtype=np.float64)
            a = np.concatenate([a, self.t0 + j * self.coarse * s])
            b = np.concatenate([b, self.t0 + (j + 1) * self.coarse * s])
        return la, lb, np.minimum(a, 1.0), np.minimum(b, 1.0)

    def table(self) -> np.ndarray:
        """float32 [max_level + 1] log-prob decoded for each level."""
        la, lb, a, b = self._cells()
        log_cells = np.log((np.exp(lb) - np.exp(la)) / LOG_STEP)
        sqrt_cells = np.minimum(np.log((a * a + a * b + b * b) / 3.0), 0.0)
        return np.concatenate([[-np.inf], log_cells, sqrt_cells]).astype(np.float32)

    def cell_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 [max_level + 1] lower and upper probability of each level's cell (level 0: exactly 0;
        the lowest log cell is open below, so its lower bound is 0). Any p a level holds is in its cell."""
        la, lb, a, b = self._cells()
        lower = np.concatenate([[0.0, 0.0], np.exp(la[1:]), a * a])
        upper = np.concatenate([[0.0], np.exp(lb), b * b])
        return lower, upper

    def levels(self, logprobs: np.ndarray) -> np.ndarray:
        """uint8 levels of log-probs (any shape, any float dtype; computed in float64)."""
        lp = np.minimum(np.asarray(logprobs, dtype=np.float64), 0.0)  # +1e-7 from fp error means p = 1
        s = self.step
        with np.errstate(under="ignore", invalid="ignore"):
            t = np.exp(0.5 * lp)
            below = np.floor((lp - 2 * math.log(s / 2)) / LOG_STEP)  # -1, -2, ... in the log cells
        fine = self.log_cells + np.floor(t / s + 0.5)
        coarse = self.log_cells + self.fine + 1 + np.floor((t - self.t0) / (self.coarse * s))
        levels = np.where(t < self.t0, fine, np.minimum(coarse, self.max_level))
        levels = np.where(t < s / 2, self.log_cells + 1 + np.maximum(below, -self.log_cells), levels)
        levels[np.isneginf(lp)] = 0
        return levels.astype(np.uint8)
