"""``distill bench student-step``: memory and time of the student head + loss, dense vs fused.

A synthetic student head of real width (default ``H = 2,048``, ``V = 151,936``, untied, no bias) and one
row of ``L = 1,800`` positions whose last ``500`` targets are supervised (an image row: visual and
prompt tokens first), against a cached top-k (``k = 64``) + tail teacher. The backbone is stood in for
by a leaf ``hidden [1, L, H]``; one step is forward + backward of head + loss:

- ``dense``: the previous trainer's shape: head at every position (``[1, L, V]`` logits),
  ``supervised_logits``, then ``losses.gjsd_topk`` + ``losses.cross_entropy`` (checkpointed chunks);
- ``fused``: ``pipeline.train.fused.fused_token_losses`` on the supervised rows only.

Loss: ``GJSD_beta + sft_alpha * CE`` over the real vocabulary, normalised by the token count.

Measurement. Every side runs in a fresh subprocess per round, sides alternating in order between
rounds; medians over rounds are reported (``time_ratio``: the median of the per-round ratios). Memory is the process's peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` just before the step; glibc is told to ``mmap`` large blocks so freed
memory leaves the RSS). The gradients are allocated before the step (``W.grad [V, H]``,
``hidden.grad``: a gradient-accumulation micro-step; both paths hold them alike), so the peak beyond
parameters and gradients is the memory the head + loss path adds: ``*_peak_mb``. ``*_total_peak_mb``
is the whole process peak with weights. The last printed line is one JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

SIDES = ("dense", "fused")


@dataclass
class StudentStepShape:
    """The benchmarked shape and settings (all defaults are the real Qwen2.5-VL student's)."""

    hidden: int = 2048  # H, the student's hidden size
    vocab: int = 151_936  # V, the head's width (= the real vocabulary here)
    seq_len: int = 1800  # positions in the row
    supervised: int = 500  # supervised targets (the last positions of the row)
    top_k: int = 64  # cached teacher top-k
    dtype: str = "float32"  # weights and hidden states ("float32" or "bfloat16"); the loss is fp32
    chunk_size: int = 256  # fused: rows per chunk
    vocab_block: int = 8192  # fused: vocabulary columns per block
    beta: float = 0.5
    sft_alpha: float = 0.5
    seed: int = 0


def _mb(n_bytes: float) -> float:
    return n_bytes / 2**20


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def run_side(side: str, shape: StudentStepShape) -> dict[str, Any]:
    """One step of ``side`` in this process; returns time and memory (MB)."""
    import torch

    from pipeline.cache.targets import renormalise_topk
    from pipeline.train import losses
    from pipeline.train.fused import fused_token_losses

    torch.manual_seed(shape.seed)
    dt = getattr(torch, shape.dtype)
    v, n, length = shape.vocab, shape.supervised, shape.seq_len
    # filled in place: no init temporary larger than the tensors themselves
    w = torch.empty(v, shape.hidden, dtype=dt).normal_(0, 0.02).requires_grad_(True)
    hidden = torch.empty(1, length, shape.hidden, dtype=dt).normal_().requires_grad_(True)
    labels = torch.full((1, length), losses.IGNORE_INDEX, dtype=torch.int64)
    labels[0, length - n :] = torch.randint(0, v, (n,))
    ids = _distinct_ids(n, v, shape.top_k)
    lp, tail = renormalise_topk(torch.randn(n, shape.top_k) - 3.0, torch.full((n,), -2.0))
    w.grad, hidden.grad = torch.zeros_like(w), torch.zeros_like(hidden)
    params_mb = _mb(w.nbytes + hidden.nbytes)
    base_kb = _rss_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
    except OSError as exc:
        raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs)") from exc
    t0 = time.perf_counter()
    if side == "dense":
        s_logits, targets = losses.supervised_logits(torch.nn.functional.linear(hidden, w), labels)
        kl = losses.gjsd_topk(s_logits, ids, lp, tail, beta=shape.beta)
        ce = losses.cross_entropy(s_logits, targets)
        loss = losses.normalise(kl + shape.sft_alpha * ce, n)
    else:
        h, targets = losses.supervised_logits(hidden, labels)
        out = fused_token_losses(
            h, w, targets, real_vocab=v, topk=(ids, lp, tail), beta=shape.beta,
            chunk_size=shape.chunk_size, vocab_block=shape.vocab_block,
        )  # fmt: skip
        assert out.kl is not None
        loss = losses.normalise(out.kl.sum() + shape.sft_alpha * out.ce.sum(), n)
    loss.backward()
    step_s = time.perf_counter() - t0
    peak_kb = _rss_kb("VmHWM")
    grads_mb = _mb(sum(t.grad.nbytes for t in (w, hidden) if t.grad is not None))
    return {
        "side": side,
        "step_s": step_s,
        "peak_mb": _mb((peak_kb - base_kb) * 1024),
        "total_peak_mb": _mb(peak_kb * 1024),
        "params_mb": params_mb,
        "grads_mb": grads_mb,
        "loss": float(loss.detach()),
    }


def _distinct_ids(n: int, v: int, k: int) -> Any:
    """``[n, k]`` distinct random ids per row without an ``[n, v]`` temporary."""
    import torch

    ids = torch.randint(0, v - k + 1, (n, 1)) + torch.arange(k)  # distinct by construction
    return ids[:, torch.randperm(k)]


def bench_student_step(shape: StudentStepShape | None = None, rounds: int = 3) -> dict[str, Any]:
    """Alternate the two sides over ``rounds`` fresh subprocesses each; print a table and one JSON line."""
    shape = shape or StudentStepShape()
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SIDES}
    for r in range(rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            cmd = [sys.executable, "-m", "pipeline.bench.student_step", side, json.dumps(asdict(shape))]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            if proc.returncode != 0 or not lines:
                raise RuntimeError(
                    f"student-step {side} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
                )
            runs[side].append(json.loads(lines[-1]))
            res = runs[side][-1]
            log.info("round %d %-5s step %.3f s  peak %.0f MB", r, side, res["step_s"], res["peak_mb"])

    def med(side: str, key: str) -> float:
        return statistics.median(x[key] for x in runs[side])

    d_peak, f_peak = med("dense", "peak_mb"), med("fused", "peak_mb")
    d_s, f_s = med("dense", "step_s"), med("fused", "step_s")
    ratios = [f["step_s"] / d["step_s"] for f, d in zip(runs["fused"], runs["dense"], strict=True)]
    summary = {
        "dense_peak_mb": d_peak,
        "fused_peak_mb": f_peak,
        "peak_ratio": d_peak / max(f_peak, 1e-9),
        "dense_step_s": d_s,
        "fused_step_s": f_s,
        # adjacent runs share the machine's load: the median of per-round ratios, as train-step does
        "time_ratio": statistics.median(ratios),
        "time_ratio_rounds": ratios,
        "dense_total_peak_mb": med("dense", "total_peak_mb"),
        "fused_total_peak_mb": med("fused", "total_peak_mb"),
        "params_mb": runs["dense"][0]["params_mb"],
        "grads_mb": runs["dense"][0]["grads_mb"],
        "loss_abs_diff": abs(runs["dense"][0]["loss"] - runs["fused"][0]["loss"]),
        "rounds": rounds,
        "hidden": shape.hidden,
        "vocab": shape.vocab,
        "seq_len": shape.seq_len,
        "supervised": shape.supervised,
        "top_k": shape.top_k,
        "chunk_size": shape.chunk_size,
        "vocab_block": shape.vocab_block,
        "weight_dtype": shape.dtype,
        "loss_dtype": "float32",
    }
    return summary


if __name__ == "__main__":
    # the worker's one result line, read by the parent from stdout
    sys.stdout.write(json.dumps(run_side(sys.argv[1], StudentStepShape(**json.loads(sys.argv[2])))) + "\n")
