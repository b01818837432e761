"""The evidence sweep over one cache: each method's learning rate chosen on a few seeds by the VAL
split, then the methods compared at their own best rates on more seeds, paired by seed, on TEST.

    python -m pipeline.evaluate.sweep plan    # print the runs the sweep needs, run nothing
    python -m pipeline.evaluate.sweep all     # select + headline + report (skips what is done)
    python -m pipeline.evaluate.sweep select  # the lr grid on the selection seeds (val only)
    python -m pipeline.evaluate.sweep headline  # baseline + best distiller (val) at their lrs, 5 seeds
    python -m pipeline.evaluate.sweep report  # the markdown tables from the results file alone

It needs what ``dvc repro`` builds up to ``export_written`` (the teacher, ``runs/demo/cache_written``,
``runs/demo/written``, ``data/prepared``). Every run is ``distill train`` + ``distill evaluate`` on
the config ``distill resolve`` writes for a run of ``params.yaml``, with the method's knobs, the
learning rate, the seed and a per-seed student init (``distill init-student --seed``) set on the
command line, so one seed means the same fresh layers *and* the same data order for every method:
that is what makes the per-seed differences paired (:mod:`pipeline.evaluate.stats`).

Why this shape:

- Every method gets its rate from the same grid, chosen by the same rule: the highest mean val caption
  F1 over the selection seeds, ties to the lower mean val CE, then to the lower rate
  (:func:`choose_learning_rate`). The test split is evaluated only for the headline runs, after the
  choice, so it cannot leak into it.
- Each finished evaluation is written to the results file (a few KB of JSON, committed) at once; a
  rerun skips every (method, lr, seed, split) already there and every training whose model is still
  in ``--work``, so an interrupted sweep resumes and the report is rebuilt from the file alone.
- The results file records the setting it was measured at (task, steps, pool); a run at another
  setting refuses to mix into it.

Pure planning, selection and reporting functions first; the subprocess calls at the bottom, behind
a ``Runner`` that the tests replace.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.evaluate.stats import PairedDifference, mean_interval, paired_difference

SPLITS = ("val", "test")
KEPT_METRICS = ("caption_f1", "ce", "token_accuracy", "bleu4", "rouge_l", "hallucination_rate", "rows_scored")


@dataclass(frozen=True)
class Method:
    """A student recipe: the ``params.yaml`` run whose resolved config it trains, plus ``--set`` knobs."""

    name: str
    run: str
    sets: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    start: str | None = None  # a method whose model (same lr, same seed) this one continues from


@dataclass(frozen=True)
class SweepSpec:
    """What the sweep runs. ``baseline`` is the method every other one is compared with, by seed."""

    methods: tuple[Method, ...] = (
        Method("sft_written", "student_sft_written", {}, "SFT on the teacher-written text"),
        Method(
            "gkd_b0_a0",
            "student_gkd_written",
            {"rlhf.beta": 0.0, "rlhf.sft_alpha": 0.0},
            "cached GKD, beta 0 (forward KL), sft_alpha 0",
        ),
        Method(
            "gkd_b05_a05",
            "student_gkd_written",
            {"rlhf.beta": 0.5, "rlhf.sft_alpha": 0.5},
            "cached GKD, beta 0.5, sft_alpha 0.5 (today's default)",
        ),
    )
    baseline: str = "sft_written"
    learning_rates: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    select_seeds: tuple[int, ...] = (0, 1)
    headline_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    select_metric: str = "caption_f1"  # higher is better
    tiebreak_metric: str = "ce"  # lower is better
    report_metrics: tuple[str, ...] = ("caption_f1", "ce")
    phase_seeds: tuple[int, ...] = (0, 1, 2)  # the optional on-policy phase
    phase_steps: int = 60
    phase_lmbda: float = 0.5
    setting: Mapping[str, Any] = field(
        default_factory=lambda: {
            "task": "exact",
            "max_steps": 300,
            "rows": "32 labels + 1,000 teacher-written",
            "student_init": "distill init-student --num-layers 2 --seed <seed>",
        }
    )

    def method(self, name: str, start: str | None = None) -> Method:
        if name in PHASE_ARMS:
            if start is None:
                raise KeyError(f"{name} needs the method it continues from")
            return phase_method(self, name, self.method(start))
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(f"no method {name!r}; methods: {[m.name for m in self.methods]}")


@dataclass(frozen=True, order=True)
class Point:
    """One training run: a method at a learning rate and a seed."""

    method: str
    lr: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}/lr{self.lr:g}/s{self.seed}"


# ---------------------------------------------------------------------------------------- results


def load_results(path: Path, spec: SweepSpec) -> dict[str, Any]:
    """The results file (or an empty one at ``spec.setting``); refuses one measured at another setting."""
    if not path.is_file():
        return {"setting": dict(spec.setting), "runs": {}}
    data = json.loads(path.read_text())
    if data.get("setting") != dict(spec.setting):
        raise ValueError(
            f"{path} was measured at {data.get('setting')}, this sweep runs {dict(spec.setting)}: "
            "use another --results file"
        )
    data.setdefault("runs", {})
    return data


def save_results(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def values(
    runs: Mapping[str, Any], method: str, lr: float, seeds: Iterable[int], split: str, metric: str
) -> dict[int, float]:
    """seed -> metric of one method at one rate on one split, for the seeds that have it."""
    out = {}
    for s in seeds:
        entry = runs.get(Point(method, lr, s).key, {}).get(split)
        if entry is not None and entry.get(metric) is not None:
            out[s] = float(entry[metric])
    return out


# -------------------------------------------------------------------------------------- selection


def selection_points(spec: SweepSpec) -> list[Point]:
    """The grid on the selection seeds, seed-major so that a cut-short sweep has whole seeds."""
    return [
        Point(m.name, lr, s) for s in spec.select_seeds for m in spec.methods for lr in spec.learning_rates
    ]


def choose_learning_rate(runs: Mapping[str, Any], spec: SweepSpec, method: str) -> float:
    """The method's rate with the best mean val ``select_metric`` over exactly the selection seeds.

    Ties go to the lower mean val ``tiebreak_metric``, then to the lower rate. Only the val split is
    read; a rate missing a seed is an error (the choice is never made on different draws).
    """
    scores = {}
    for lr in spec.learning_rates:
        main = values(runs, method, lr, spec.select_seeds, "val", spec.select_metric)
        tie = values(runs, method, lr, spec.select_seeds, "val", spec.tiebreak_metric)
        missing = sorted(set(spec.select_seeds) - set(main) | set(spec.select_seeds) - set(tie))
        if missing:
            raise ValueError(
                f"{method} at lr {lr:g}: no val {spec.select_metric}/{spec.tiebreak_metric} for seeds {missing}"
            )
        scores[lr] = (-statistics.fmean(main.values()), statistics.fmean(tie.values()), lr)
    return min(scores, key=lambda lr: scores[lr])


def choose_learning_rates(runs: Mapping[str, Any], spec: SweepSpec) -> dict[str, float]:
    return {m.name: choose_learning_rate(runs, spec, m.name) for m in spec.methods}


def headline_methods(runs: Mapping[str, Any], spec: SweepSpec, best_lr: Mapping[str, float]) -> list[str]:
    """The headline pair: the baseline and the distilling method that is best on val (:func:`best_offline`)."""
    return [spec.baseline, best_offline(runs, spec, best_lr)]


def headline_points(spec: SweepSpec, best_lr: Mapping[str, float], methods: Sequence[str]) -> list[Point]:
    """The headline methods at their own best rates on the headline seeds (selection seeds reused)."""
    return [Point(m, best_lr[m], s) for s in spec.headline_seeds for m in methods]


# ------------------------------------------------------------------------- on-policy phase (optional)

PHASE_ARMS = ("phase_onpolicy", "phase_offline")


def phase_method(spec: SweepSpec, arm: str, start: Method) -> Method:
    """``phase_steps`` more steps of ``start``'s loss from its trained model: ``lmbda`` = ``phase_lmbda``
    (on-policy batches scored by the live teacher) or 0 (the same offline steps), at the start's lr."""
    lmbda = spec.phase_lmbda if arm == "phase_onpolicy" else 0.0
    sets = {**start.sets, "rlhf.lmbda": lmbda, "train.max_steps": spec.phase_steps}
    label = f"{spec.phase_steps} more steps of {start.name}, lmbda {lmbda:g}"
    return Method(arm, start.run, sets, label, start=start.name)


def best_offline(runs: Mapping[str, Any], spec: SweepSpec, best_lr: Mapping[str, float]) -> str:
    """The distilling method (not the baseline) with the best mean val F1 at its chosen rate, ties by CE."""

    def score(m: str) -> tuple[float, float]:
        f1 = values(runs, m, best_lr[m], spec.select_seeds, "val", spec.select_metric)
        ce = values(runs, m, best_lr[m], spec.select_seeds, "val", spec.tiebreak_metric)
        return (-statistics.fmean(f1.values()), statistics.fmean(ce.values()))

    return min((m.name for m in spec.methods if m.name != spec.baseline), key=score)


def phase_points(spec: SweepSpec, lr: float) -> list[Point]:
    return [Point(arm, lr, s) for s in spec.phase_seeds for arm in PHASE_ARMS]


def format_phase(data: Mapping[str, Any], spec: SweepSpec) -> str:
    """The on-policy phase's table, if the results file holds it."""
    phase = data.get("phase")
    if not phase:
        return ""
    runs, lr, start = data["runs"], float(phase["lr"]), phase["start"]
    seeds = [
        s
        for s in spec.phase_seeds
        if all(values(runs, arm, lr, [s], "test", k) for arm in PHASE_ARMS for k in spec.report_metrics)
    ]
    lines = [
        "",
        f"**On-policy phase: {spec.phase_steps} more steps from {start} (lr {lr:g}), lmbda "
        f"{spec.phase_lmbda:g} vs 0, test, seeds {', '.join(map(str, seeds)) or '-'}:**",
        "",
        "| arm | caption F1 per seed | CE per seed | train s per seed |",
        "|---|---|---|---|",
    ]
    for arm in PHASE_ARMS:
        f1 = values(runs, arm, lr, seeds, "test", "caption_f1")
        ce = values(runs, arm, lr, seeds, "test", "ce")
        wall = [runs[Point(arm, lr, s).key].get("train_wall_s") for s in seeds]
        lines.append(
            f"| {arm} | "
            + " / ".join(f"{f1[s]:.3f}" for s in seeds)
            + " | "
            + " / ".join(f"{ce[s]:.3f}" for s in seeds)
            + " | "
            + " / ".join(f"{w:.0f}" if w is not None else "-" for w in wall)
            + " |"
        )
    if len(seeds) >= 2:
        cells = []
        for k in spec.report_metrics:
            a = values(runs, PHASE_ARMS[0], lr, seeds, "test", k)
            b = values(runs, PHASE_ARMS[1], lr, seeds, "test", k)
            cells.append(f"{k}: {paired_difference(a, b).format()}")
        lines += ["", "Paired (on-policy - offline): " + "; ".join(cells) + "."]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------- reporting


def headline_differences(
    runs: Mapping[str, Any],
    spec: SweepSpec,
    best_lr: Mapping[str, float],
    seeds: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
) -> dict[str, dict[str, PairedDifference]]:
    """method -> test metric -> paired difference (method - baseline), each at its own best rate.

    ``seeds`` defaults to the headline seeds; every one must be there on both sides
    (:func:`paired_difference` refuses an unpaired seed).
    """
    seeds = tuple(spec.headline_seeds if seeds is None else seeds)
    names = [m.name for m in spec.methods] if methods is None else list(methods)
    out: dict[str, dict[str, PairedDifference]] = {}
    for name in names:
        if name == spec.baseline:
            continue
        for metric in spec.report_metrics:
            a = values(runs, name, best_lr[name], seeds, "test", metric)
            b = values(runs, spec.baseline, best_lr[spec.baseline], seeds, "test", metric)
            for side, got in ((name, a), (spec.baseline, b)):
                if set(got) != set(seeds):
                    raise ValueError(f"{side}: no test {metric} for seeds {sorted(set(seeds) - set(got))}")
            out.setdefault(name, {})[metric] = paired_difference(a, b)
    return out


def complete_headline_seeds(
    runs: Mapping[str, Any], spec: SweepSpec, best_lr: Mapping[str, float], methods: Sequence[str]
) -> list[int]:
    """The headline seeds on which every one of ``methods`` has every report metric on test."""
    return [
        s
        for s in spec.headline_seeds
        if all(values(runs, m, best_lr[m], [s], "test", k) for m in methods for k in spec.report_metrics)
    ]


def _cell(runs: Mapping[str, Any], spec: SweepSpec, method: str, lr: float, split: str, metric: str) -> str:
    got = values(runs, method, lr, spec.select_seeds, split, metric)
    if not got:
        return "-"
    return " / ".join(f"{got[s]:.3f}" for s in sorted(got)) + f" (mean {statistics.fmean(got.values()):.3f})"


def format_report(data: Mapping[str, Any], spec: SweepSpec) -> str:
    """Markdown: the val grid, the chosen rates, per-seed test values and the paired differences."""
    runs = data["runs"]
    lines = [
        f"Setting: {', '.join(f'{k} {v}' for k, v in spec.setting.items())}.",
        "",
        f"**Learning-rate selection (val split, seeds {', '.join(map(str, spec.select_seeds))}; "
        f"caption F1 per seed, then CE):**",
        "",
        "| method | "
        + " | ".join(f"lr {lr:g}: F1" for lr in spec.learning_rates)
        + " | "
        + " | ".join(f"lr {lr:g}: CE" for lr in spec.learning_rates)
        + " |",
        "|---|" + "---|" * (2 * len(spec.learning_rates)),
    ]
    for m in spec.methods:
        f1 = [_cell(runs, spec, m.name, lr, "val", spec.select_metric) for lr in spec.learning_rates]
        ce = [_cell(runs, spec, m.name, lr, "val", spec.tiebreak_metric) for lr in spec.learning_rates]
        lines.append(f"| {m.name} | " + " | ".join(f1 + ce) + " |")
    try:
        best = choose_learning_rates(runs, spec)
    except ValueError as e:
        return "\n".join([*lines, "", f"(selection incomplete: {e})"]) + "\n"
    lines += ["", "Chosen (val): " + ", ".join(f"{m} lr {lr:g}" for m, lr in best.items()) + ".", ""]
    heads = headline_methods(runs, spec, best)
    seeds = complete_headline_seeds(runs, spec, best, heads)
    lines += [
        f"**Test split, each method at its chosen lr, seeds {', '.join(map(str, seeds)) or '-'}:**",
        "",
        "| method | lr | caption F1 per seed | mean [95% CI] | CE per seed | mean [95% CI] | train s (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in heads:
        lr = best[name]
        row = [name, f"{lr:g}"]
        for k in spec.report_metrics:
            got = values(runs, name, lr, seeds, "test", k)
            row.append(" / ".join(f"{got[s]:.3f}" for s in seeds) or "-")
            row.append(_iv(got.values()))
        walls = [runs[Point(name, lr, s).key].get("train_wall_s") for s in seeds]
        walls_f = [float(w) for w in walls if w is not None]
        row.append(f"{statistics.median(walls_f):.0f}" if walls_f else "-")
        lines.append("| " + " | ".join(row) + " |")
    if len(seeds) >= 2:
        diffs = headline_differences(runs, spec, best, seeds, heads)
        lines += [
            "",
            f"**Paired by seed (method - {spec.baseline}), test, mean [95% t-interval]:**",
            "",
            "| method | "
            + " | ".join(f"{k} difference" for k in spec.report_metrics)
            + " | same sign every seed |",
            "|---|" + "---|" * (len(spec.report_metrics) + 1),
        ]
        for name, per in diffs.items():
            signs = ", ".join(
                f"{k}: {'yes' if per[k].same_sign_on_every_seed else 'no'}" for k in spec.report_metrics
            )
            lines.append(
                f"| {name} | " + " | ".join(per[k].format() for k in spec.report_metrics) + f" | {signs} |"
            )
    return "\n".join(lines) + "\n"


def _iv(xs: Iterable[float]) -> str:
    xs = list(xs)
    if len(xs) < 2:
        return "-"
    iv = mean_interval(xs)
    return f"{iv.mean:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


# ------------------------------------------------------------------------------------------ driving


Runner = Callable[[Point, Sequence[str]], dict[str, dict[str, Any]]]
"""Trains (or reuses) a point and evaluates it on the given splits: split -> kept metrics, plus
``"train_wall_s"`` -> {"value": seconds}."""


def ensure(
    points: Iterable[Point],
    splits: Sequence[str],
    data: dict[str, Any],
    runner: Runner,
    save: Callable[[Mapping[str, Any]], None],
) -> int:
    """Run each point's missing splits through ``runner``, saving after each; returns how many ran."""
    ran = 0
    for p in points:
        entry = data["runs"].setdefault(p.key, {"method": p.method, "lr": p.lr, "seed": p.seed})
        todo = [s for s in splits if s not in entry]
        if not todo:
            continue
        got = runner(p, todo)
        wall = got.pop("train_wall_s", None)
        if wall is not None:
            entry["train_wall_s"] = wall["value"]
        entry.update(got)
        save(data)
        ran += 1
    return ran


@dataclass
class DistillRunner:
    """The real runner: ``distill init-student`` / ``train`` / ``evaluate`` subprocesses under ``work``."""

    spec: SweepSpec
    work: Path
    params: Path = Path("params.yaml")
    teacher: Path = Path("runs/demo/teacher/final")
    threads: int = 2
    start: str | None = None  # the method the on-policy phase continues from

    def _env(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}

    def _call(self, cmd: list[str], log: Path) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        print("$", " ".join(cmd), flush=True)
        with log.open("a") as fh:
            subprocess.run(cmd, check=True, env=self._env(), stdout=fh, stderr=subprocess.STDOUT)

    def config(self, run: str) -> Path:
        path = self.work / "configs" / f"{run}.yaml"
        if not path.is_file():
            self._call(
                ["distill", "resolve", "--params", str(self.params), "--out", str(path.parent)],
                self.work / "resolve.log",
            )
        return path

    def init(self, seed: int) -> Path:
        out = self.work / "init" / f"s{seed}"
        if not (out / "config.json").is_file():
            self._call(
                [
                    "distill",
                    "init-student",
                    "--teacher",
                    str(self.teacher),
                    "--out",
                    str(out),
                    "--num-layers",
                    "2",
                    "--seed",
                    str(seed),
                    "--overwrite",
                ],
                self.work / "init.log",
            )
        return out

    def __call__(self, p: Point, splits: Sequence[str]) -> dict[str, dict[str, Any]]:
        m = self.spec.method(p.method, self.start)
        out = self.work / "runs" / p.method / f"lr{p.lr:g}-s{p.seed}"
        init = (
            self.work / "runs" / m.start / f"lr{p.lr:g}-s{p.seed}" / "final" if m.start else self.init(p.seed)
        )
        sets = {
            **m.sets,
            "train.learning_rate": p.lr,
            "train.seed": p.seed,
            "model.model": str(init),
            "train.output_dir": str(out),
        }
        args = ["--config", str(self.config(m.run))]
        for k, v in sets.items():
            args += ["--set", f"{k}={v}"]
        log = out.parent / f"lr{p.lr:g}-s{p.seed}.log"
        if not (out / "train_time.json").is_file():
            self._call(["distill", "train", *args], log)
        got: dict[str, dict[str, Any]] = {
            "train_wall_s": {"value": json.loads((out / "train_time.json").read_text())["train_wall_s"]}
        }
        for split in splits:
            path = out / f"metrics_{split}.json"
            self._call(["distill", "evaluate", *args, "--split", split, "--out", str(path)], log)
            metrics = json.loads(path.read_text())
            got[split] = {k: metrics.get(k) for k in KEPT_METRICS}
        return got


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("phase", choices=["plan", "select", "headline", "all", "onpolicy", "report"])
    p.add_argument("--results", type=Path, default=Path("docs/evidence/sweep_exact.json"))
    p.add_argument("--work", type=Path, default=Path("runs/sweep"), help="models, logs, resolved configs")
    p.add_argument("--params", type=Path, default=Path("params.yaml"))
    p.add_argument("--seeds", type=int, nargs="+", help="headline seeds (default 0-4)")
    p.add_argument("--select-seeds", type=int, nargs="+", help="lr-selection seeds (default 0 1)")
    p.add_argument("--methods", nargs="+", help="a subset of the methods (the baseline always stays)")
    a = p.parse_args(argv)
    spec = SweepSpec()
    if a.methods:
        unknown = sorted(set(a.methods) - {m.name for m in spec.methods})
        if unknown:
            p.error(f"unknown methods {unknown}")
        keep = {spec.baseline, *a.methods}
        spec = replace(spec, methods=tuple(m for m in spec.methods if m.name in keep))
    if a.seeds:
        spec = replace(spec, headline_seeds=tuple(a.seeds))
    if a.select_seeds:
        spec = replace(spec, select_seeds=tuple(a.select_seeds))
    data = load_results(a.results, spec)
    runner = DistillRunner(spec, a.work, a.params)

    def save(d: Mapping[str, Any]) -> None:
        save_results(a.results, d)

    if a.phase == "plan":
        for pt in selection_points(spec):
            print(pt.key, "val", "done" if "val" in data["runs"].get(pt.key, {}) else "todo")
        return 0
    if a.phase in ("select", "all"):
        ensure(selection_points(spec), ["val"], data, runner, save)
    if a.phase in ("headline", "all"):
        best = choose_learning_rates(data["runs"], spec)
        heads = headline_methods(data["runs"], spec, best)
        ensure(headline_points(spec, best, heads), ["test"], data, runner, save)
    if a.phase == "onpolicy":
        best = choose_learning_rates(data["runs"], spec)
        start = best_offline(data["runs"], spec, best)
        data["phase"] = {"start": start, "lr": best[start]}
        runner.start = start
        ensure(phase_points(spec, best[start]), ["test"], data, runner, save)
    report = format_report(data, spec) + format_phase(data, spec)
    a.results.with_suffix(".md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
