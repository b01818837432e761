"""``distill bench encoded-memo``: a whole training run with and without the kept encodings.

Training keeps the encodings it made (``custom.encoded_cache_mb``, :mod:`pipeline.train.data`), so
epochs after the first skip the template, the image decode and the image hashing. Step time
(``distill bench train-step``) does not see this: the trainer fetches a batch before its step begins.
This bench times the whole training loop (data loading, steps, logging) of one config in two
subprocesses per round, ``kept`` (the config's budget) and ``none`` (``encoded_cache_mb = 0``),
alternating their order over rounds; same config, steps and seed. Pick ``--steps`` past one epoch,
or both modes encode every row once and tie. The last line printed is one JSON object.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from pipeline.bench.train_step import run_subprocess

log = logging.getLogger(__name__)

DEFAULT_OUT = Path("runs/bench/encoded_memo")  # not a DVC output
MODES = {"kept": {}, "none": {"custom.encoded_cache_mb": 0}}


def bench_encoded_memo(
    config_path: Path,
    steps: int = 150,
    rounds: int = 3,
    overrides: dict[str, Any] | None = None,
    out: Path = DEFAULT_OUT,
    mode: str = "cached",
) -> dict[str, Any]:
    """Train ``steps`` steps per mode and round in subprocesses (``mode``: the train-step bench's
    ``sft`` or ``cached``); log the per-round times; return the summary (the command prints it as one JSON line)."""
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    names = list(MODES)
    for r in range(rounds):
        for name in names[r % 2 :] + names[: r % 2]:
            ov = {**(overrides or {}), **MODES[name]}
            runs[name].append(run_subprocess(config_path, mode, steps, Path(out) / f"r{r}" / name, ov))
    for name in names:
        times = " ".join(f"{x['train_s']:.2f}" for x in runs[name])
        log.info("%-5s training loop s per round [%s]", name, times)
    ratios = [k["train_s"] / n["train_s"] for k, n in zip(runs["kept"], runs["none"], strict=True)]
    summary = {
        "steps": steps,
        "kept_train_s": statistics.median(x["train_s"] for x in runs["kept"]),
        "none_train_s": statistics.median(x["train_s"] for x in runs["none"]),
        "kept_over_none": statistics.median(ratios),
        "kept_over_none_rounds": ratios,
        "kept_encodes": statistics.median(x["encodes"] for x in runs["kept"]),
        "none_encodes": statistics.median(x["encodes"] for x in runs["none"]),
        "kept_peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in runs["kept"]),
        "none_peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in runs["none"]),
        "rounds": rounds,
    }
    return summary
