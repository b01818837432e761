"""The evidence sweep over one cache, on DVC's experiment queue: pick each method's learning rate on a
few seeds by a validation metric, then compare the methods at their own best rates on more seeds.

    python -m pipeline.evaluate.sweep plan      # print the experiments, queue nothing
    python -m pipeline.evaluate.sweep select    # queue + run the lr grid on the selection seeds
    python -m pipeline.evaluate.sweep headline  # queue + run every method at its best lr, 5 seeds
    python -m pipeline.evaluate.sweep report    # paired differences with 95% intervals (markdown)

Why this shape:

- One experiment is one (learning rate, seed) point and trains *every* method: the methods share the
  seed's fresh layers and data order, which is what makes their per-seed differences paired.
- The teacher, its caches and the teacher-written text depend on no key this driver sets, so DVC
  skips them in every experiment; the student stages that an experiment did not change (another
  method's rate) are restored from DVC's run cache, so the headline seeds already run in the
  selection phase cost nothing.
- Every method gets its rate from the same grid, chosen by the same validation metric on the same
  seeds (:func:`pipeline.evaluate.stats.best_setting`); the test split is read only for the
  headline numbers.

The driver knows the project's DVC layout only through :class:`SweepSpec` (the ``-S`` key of a
method's learning rate and of the seed, the metrics file of a method on val and on test), so a change
of ``dvc.yaml`` that keeps those keys needs no change here. Pure planning and selection functions,
with the few DVC calls (``dvc exp run --queue``, ``dvc exp run --run-all``, ``dvc.api.exp_show``)
kept at the bottom.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.evaluate.stats import PairedDifference, best_setting, paired_difference


@dataclass(frozen=True)
class SweepSpec:
    """What the sweep runs and where it reads results.

    ``methods``: run names of params.yaml's run list (each a trainer + beta + sft_alpha); ``baseline``
    the one every other method is compared with (paired by seed). ``lr_key`` / ``seed_key``: the
    ``dvc exp run -S`` keys (``{run}`` is replaced by the method). ``val_metrics`` / ``test_metrics``:
    a method's metrics file, as DVC reports it (``{run}`` replaced). ``select_metric`` decides the
    learning rate (``higher_is_better``); ``report_metrics`` are compared on test.
    """

    methods: tuple[str, ...] = (
        "student_sft_written",
        "gkd_b0_a0",
        "gkd_b0_a05",
        "gkd_b05_a0",
        "gkd_b05_a05",
        "gkd_b1_a0",
        "gkd_b1_a05",
    )
    baseline: str = "student_sft_written"
    learning_rates: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    select_seeds: tuple[int, ...] = (0, 1)
    headline_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    lr_key: str = "runs.{run}.learning_rate"
    seed_key: str = "student.seed"
    val_metrics: str = "metrics/val/{run}.json"
    test_metrics: str = "metrics/{run}.json"
    select_metric: str = "caption_f1"
    higher_is_better: bool = True
    report_metrics: tuple[str, ...] = ("caption_f1", "ce")


@dataclass(frozen=True)
class Experiment:
    """One queued DVC experiment: its name and the ``-S key=value`` overrides it runs with."""

    name: str
    sets: dict[str, Any] = field(default_factory=dict)

    def command(self) -> list[str]:
        cmd = ["dvc", "exp", "run", "--queue", "--name", self.name]
        for key, value in self.sets.items():
            cmd += ["-S", f"{key}={value}"]
        return cmd


@dataclass(frozen=True)
class Record:
    """One finished experiment as the driver reads it: the values of its ``-S`` keys and its metrics.

    ``metrics`` maps ``(metrics file, key)`` to a number.
    """

    name: str
    params: dict[str, Any]
    metrics: dict[tuple[str, str], float]


def _lr_name(lr: float) -> str:
    return f"{lr:.0e}".replace("-0", "-").replace("+0", "")


def selection_plan(spec: SweepSpec) -> list[Experiment]:
    """The learning-rate grid on the selection seeds: every method at one rate per experiment."""
    return [
        Experiment(
            f"lr{_lr_name(lr)}-s{seed}",
            {**{spec.lr_key.format(run=m): lr for m in spec.methods}, spec.seed_key: seed},
        )
        for lr in spec.learning_rates
        for seed in spec.select_seeds
    ]


def headline_plan(spec: SweepSpec, best_lr: Mapping[str, float]) -> list[Experiment]:
    """Every method at its own best rate, one experiment per headline seed."""
    missing = [m for m in spec.methods if m not in best_lr]
    if missing:
        raise ValueError(f"no selected learning rate for {missing}: run the selection phase first")
    return [
        Experiment(
            f"best-s{seed}",
            {**{spec.lr_key.format(run=m): best_lr[m] for m in spec.methods}, spec.seed_key: seed},
        )
        for seed in spec.headline_seeds
    ]


def _metric(record: Record, path: str, key: str) -> float | None:
    value = record.metrics.get((path, key))
    return None if value is None else float(value)


def by_method(
    records: Iterable[Record], spec: SweepSpec, path_template: str, metric: str
) -> dict[str, dict[float, dict[int, float]]]:
    """method -> learning rate -> seed -> metric, from every record that holds the metric.

    A (method, rate, seed) seen in two records (a rerun) keeps the later one.
    """
    out: dict[str, dict[float, dict[int, float]]] = {m: {} for m in spec.methods}
    for r in records:
        seed = r.params.get(spec.seed_key)
        if seed is None:
            continue
        for m in spec.methods:
            lr = r.params.get(spec.lr_key.format(run=m))
            value = _metric(r, path_template.format(run=m), metric)
            if lr is None or value is None:
                continue
            out[m].setdefault(float(lr), {})[int(seed)] = value
    return out


def choose_learning_rates(records: Iterable[Record], spec: SweepSpec) -> dict[str, float]:
    """Each method's best rate by ``select_metric`` on val, over exactly the selection seeds."""
    table = by_method(records, spec, spec.val_metrics, spec.select_metric)
    best: dict[str, float] = {}
    for m in spec.methods:
        grid = {
            lr: {s: v for s, v in seeds.items() if s in spec.select_seeds}
            for lr, seeds in table[m].items()
            if lr in spec.learning_rates
        }
        incomplete = [lr for lr in spec.learning_rates if set(grid.get(lr, {})) != set(spec.select_seeds)]
        if incomplete:
            raise ValueError(f"{m}: no {spec.select_metric} on seeds {spec.select_seeds} at lr {incomplete}")
        best[m] = best_setting(grid, higher_is_better=spec.higher_is_better)[0]
    return best


def headline_differences(
    records: Iterable[Record], spec: SweepSpec, best_lr: Mapping[str, float]
) -> dict[str, dict[str, PairedDifference]]:
    """method -> test metric -> paired difference (method - baseline) over the headline seeds."""
    records = list(records)
    out: dict[str, dict[str, PairedDifference]] = {}
    for metric in spec.report_metrics:
        table = by_method(records, spec, spec.test_metrics, metric)
        per_seed = {m: _at_best(table, spec, m, best_lr[m], metric) for m in spec.methods}
        for m in spec.methods:
            if m != spec.baseline:
                out.setdefault(m, {})[metric] = paired_difference(per_seed[m], per_seed[spec.baseline])
    return out


def _at_best(
    table: Mapping[str, Mapping[float, Mapping[int, float]]], spec: SweepSpec, m: str, lr: float, metric: str
) -> dict[int, float]:
    seeds = table[m].get(lr, {})
    missing = [s for s in spec.headline_seeds if s not in seeds]
    if missing:
        raise ValueError(f"{m} at lr {lr}: no test {metric} for seeds {missing}")
    return {s: seeds[s] for s in spec.headline_seeds}


def format_report(
    diffs: Mapping[str, Mapping[str, PairedDifference]], spec: SweepSpec, best_lr: Mapping[str, float]
) -> str:
    """Markdown: one row per method, the paired difference to the baseline per metric."""
    head = (
        "| method | lr | " + " | ".join(f"{k} - {spec.baseline} (95% CI)" for k in spec.report_metrics) + " |"
    )
    lines = [head, "|" + "---|" * (2 + len(spec.report_metrics))]
    for m, per_metric in diffs.items():
        cells = [per_metric[k].format() for k in spec.report_metrics]
        lines.append(f"| {m} | {best_lr[m]:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ DVC calls


def queue_and_run(experiments: Sequence[Experiment], jobs: int = 1) -> None:
    """Queue every experiment, then run the queue (the cache stages are skipped: unchanged deps)."""
    for e in experiments:
        subprocess.run(e.command(), check=True)
    subprocess.run(["dvc", "exp", "run", "--run-all", "--jobs", str(jobs)], check=True)


def collect(spec: SweepSpec) -> list[Record]:
    """Finished experiments of the current commit, through ``dvc.api.exp_show``.

    ``exp_show`` names a column ``file:key`` when the key is ambiguous across files, else by the key
    alone; both spellings are read.
    """
    import dvc.api

    wanted_params = {spec.seed_key} | {spec.lr_key.format(run=m) for m in spec.methods}
    records = []
    for row in dvc.api.exp_show():
        name = row.get("Experiment") or row.get("rev")
        params = {}
        metrics: dict[tuple[str, str], float] = {}
        for column, value in row.items():
            path, _, key = column.rpartition(":")
            if key in wanted_params and value is not None:
                params[key] = value
            elif path and isinstance(value, int | float):
                metrics[(path, key)] = float(value)
        if params:
            records.append(Record(str(name), params, metrics))
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("phase", choices=["plan", "select", "headline", "report"])
    p.add_argument("--jobs", type=int, default=1, help="experiments run at once (each trains every method)")
    a = p.parse_args()
    spec = SweepSpec()
    if a.phase == "plan":
        for e in selection_plan(spec):
            print(" ".join(e.command()))
        return
    if a.phase == "select":
        queue_and_run(selection_plan(spec), a.jobs)
        return
    best = choose_learning_rates(collect(spec), spec)
    print("best learning rates:", best)
    if a.phase == "headline":
        queue_and_run(headline_plan(spec, best), a.jobs)
        return
    print(format_report(headline_differences(collect(spec), spec, best), spec, best))


if __name__ == "__main__":
    from pipeline.errors import exit_code

    sys.exit(exit_code(main))
