"""The evidence sweep's tables, learning curve and figure, written from the results file alone.

Every number here is read from ``docs/evidence/sweep_<task>.json`` (:mod:`pipeline.evidence.sweep`
writes it); nothing is recomputed from models, so ``distill evidence report`` on a
fresh clone rebuilds the markdown, the CSV that ``dvc plots`` reads and the PNG the guide shows.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.evidence.stats import PairedDifference, mean_interval, paired_difference
from pipeline.evidence.sweep import (
    Point,
    SweepSpec,
    arm_pairs,
    arm_points,
    best_offline,
    choose_learning_rates,
    chosen_phase_rates,
    headline_methods,
    values,
)
from pipeline.files import atomic_path, atomic_write


def headline_differences(
    runs: Mapping[str, Any],
    spec: SweepSpec,
    best_lr: Mapping[str, float],
    seeds: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
) -> dict[str, dict[str, PairedDifference]]:
    """``"<distiller> - <reference>"`` -> test metric -> paired difference, each at its own best rate.

    Every distiller among ``methods`` is compared with the baseline and each reference among them.
    ``seeds`` defaults to the headline seeds; every one must be there on both sides
    (:func:`paired_difference` refuses an unpaired seed).
    """
    seeds = tuple(spec.headline_seeds if seeds is None else seeds)
    names = [m.name for m in spec.methods] if methods is None else list(methods)
    refs = [r for r in (spec.baseline, *spec.references) if r in names]
    out: dict[str, dict[str, PairedDifference]] = {}
    for name in (n for n in names if n not in refs):
        for ref in refs:
            for metric in spec.report_metrics:
                a = values(runs, name, best_lr[name], seeds, "test", metric)
                b = values(runs, ref, best_lr[ref], seeds, "test", metric)
                for side, got in ((name, a), (ref, b)):
                    if set(got) != set(seeds):
                        raise ValueError(
                            f"{side}: no test {metric} for seeds {sorted(set(seeds) - set(got))}"
                        )
                out.setdefault(f"{name} - {ref}", {})[metric] = paired_difference(a, b)
    return out


def complete_seeds(
    runs: Mapping[str, Any], spec: SweepSpec, points: Sequence[tuple[str, float]], seeds: Iterable[int]
) -> list[int]:
    """The ``seeds`` on which every (method, lr) of ``points`` has every report metric on test."""
    return [
        s
        for s in seeds
        if all(values(runs, m, lr, [s], "test", k) for m, lr in points for k in spec.report_metrics)
    ]


def _iv(xs: Iterable[float]) -> str:
    xs = list(xs)
    if len(xs) < 2:
        return "-"
    iv = mean_interval(xs)
    return f"{iv.mean:.3f} [{iv.low:.3f}, {iv.high:.3f}]"


def _per_seed(got: Mapping[int, float], seeds: Sequence[int]) -> str:
    return " / ".join(f"{got[s]:.3f}" for s in seeds) or "-"


def _walls(runs: Mapping[str, Any], method: str, lr: float, seeds: Sequence[int]) -> list[float]:
    walls = [runs.get(Point(method, lr, s).key, {}).get("train_wall_s") for s in seeds]
    return [float(w) for w in walls if w is not None]


def _paired_cells(
    runs: Mapping[str, Any],
    spec: SweepSpec,
    a: tuple[str, float],
    b: tuple[str, float],
    seeds: Sequence[int],
) -> list[str]:
    """``"<metric> <paired difference a - b>"`` per report metric, on test over ``seeds``."""
    return [
        f"{k} "
        + paired_difference(values(runs, *a, seeds, "test", k), values(runs, *b, seeds, "test", k)).format()
        for k in spec.report_metrics
    ]


def _selection_cell(runs: Mapping[str, Any], spec: SweepSpec, method: str, lr: float, metric: str) -> str:
    got = values(runs, method, lr, spec.select_seeds, "val", metric)
    if not got:
        return "-"
    return " / ".join(f"{got[s]:.3f}" for s in sorted(got)) + f" (mean {statistics.fmean(got.values()):.3f})"


def _grid_table(
    runs: Mapping[str, Any], spec: SweepSpec, names: Sequence[str], lrs: Sequence[float]
) -> list[str]:
    """One row per name: val caption F1 per seed (with the mean) at each rate of ``lrs``, then CE."""
    lines = [
        "| method | "
        + " | ".join(f"lr {lr:g}: F1" for lr in lrs)
        + " | "
        + " | ".join(f"lr {lr:g}: CE" for lr in lrs)
        + " |",
        "|---|" + "---|" * (2 * len(lrs)),
    ]
    for name in names:
        f1 = [_selection_cell(runs, spec, name, lr, spec.select_metric) for lr in lrs]
        ce = [_selection_cell(runs, spec, name, lr, spec.tiebreak_metric) for lr in lrs]
        lines.append(f"| {name} | " + " | ".join(f1 + ce) + " |")
    return lines


def _seeds(seeds: Iterable[int]) -> str:
    return ", ".join(map(str, seeds))


def format_selection(runs: Mapping[str, Any], spec: SweepSpec) -> list[str]:
    return [
        f"**Learning-rate selection (val split, seeds {_seeds(spec.select_seeds)}; caption F1 per seed, then CE):**",
        "",
        *_grid_table(runs, spec, [m.name for m in spec.methods], spec.learning_rates),
    ]


def format_phase_selection(runs: Mapping[str, Any], spec: SweepSpec, arms: Sequence[str]) -> list[str]:
    """The phase arms' continuation-rate grid on val, chosen like a method's rate."""
    return [
        "",
        f"**Continuation rate of each phase arm (val split, seeds {_seeds(spec.select_seeds)}; caption F1 "
        "per seed, then CE):**",
        "",
        *_grid_table(runs, spec, arms, spec.phase_learning_rates),
    ]


def format_headline(runs: Mapping[str, Any], spec: SweepSpec, best: Mapping[str, float]) -> list[str]:
    heads = headline_methods(runs, spec, best)
    seeds = complete_seeds(runs, spec, [(m, best[m]) for m in heads], spec.headline_seeds)
    lines = [
        f"**Test split, each method at its chosen lr, seeds {', '.join(map(str, seeds)) or '-'}:**",
        "",
        "| method | lr | caption F1 per seed | mean [95% CI] | CE per seed | mean [95% CI] | train s (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in heads:
        row = [name, f"{best[name]:g}"]
        for k in spec.report_metrics:
            got = values(runs, name, best[name], seeds, "test", k)
            row += [_per_seed(got, seeds), _iv(got.values())]
        walls = _walls(runs, name, best[name], seeds)
        row.append(f"{statistics.median(walls):.0f}" if walls else "-")
        lines.append("| " + " | ".join(row) + " |")
    if len(seeds) < 2:
        return lines
    diffs = headline_differences(runs, spec, best, seeds, heads)
    lines += [
        "",
        "**Paired by seed, test, mean [95% t-interval]:**",
        "",
        "| comparison | "
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
    return lines


def format_long(data: Mapping[str, Any], spec: SweepSpec) -> list[str]:
    """The headline pair at ``long_steps`` beside the same pair at the headline's steps, on the seeds all
    four have: per seed, mean [95% CI] and the standard deviation over seeds (the spread a longer
    schedule should close), then the paired difference at each length."""
    chosen = data.get("best")
    if not chosen or spec.long_steps is None:
        return []
    runs, base, best = data["runs"], spec.baseline, str(chosen["method"])
    lr = {base: float(chosen["baseline_lr"]), best: float(chosen["lr"])}
    full = int(spec.setting["max_steps"])
    named = {
        (m, steps): m if steps == full else f"{m}@s{steps}"
        for steps in (full, spec.long_steps)
        for m in (base, best)
    }
    seeds = complete_seeds(runs, spec, [(n, lr[m]) for (m, _), n in named.items()], spec.long_seeds)
    if len(seeds) < 2:
        return []
    lines = [
        "",
        f"**Longer runs: {base} and {best} at {spec.long_steps} steps beside {full}, each at the rate chosen "
        f"at {full} steps ({base} lr {lr[base]:g}, {best} lr {lr[best]:g}), test, seeds {_seeds(seeds)}:**",
        "",
        "| method | steps | caption F1 per seed | mean [95% CI] | sd | CE per seed | mean [95% CI] | sd |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (m, steps), name in named.items():
        row = [m, str(steps)]
        for k in spec.report_metrics:
            got = values(runs, name, lr[m], seeds, "test", k)
            row += [_per_seed(got, seeds), _iv(got.values()), f"{statistics.stdev(got.values()):.3f}"]
        lines.append("| " + " | ".join(row) + " |")
    cells = []
    for steps in (full, spec.long_steps):
        a, b = (named[(best, steps)], lr[best]), (named[(base, steps)], lr[base])
        cells.append(f"at {steps} steps " + ", ".join(_paired_cells(runs, spec, a, b, seeds)))
    lines += ["", f"Paired ({best} - {base}), same seeds: " + "; ".join(cells) + "."]
    return lines


def format_knobs(runs: Mapping[str, Any], spec: SweepSpec, best: Mapping[str, float]) -> list[str]:
    """Every distilling setting at its own chosen rate on test, paired with the baseline by seed."""
    names = [spec.baseline, *spec.distillers()]
    seeds = complete_seeds(runs, spec, [(m, best[m]) for m in names], spec.knob_seeds)
    if len(seeds) < 2 or len(names) < 3:  # one distiller: the headline table says it all
        return []
    diffs = headline_differences(runs, spec, best, seeds, names)
    lines = [
        "",
        f"**Every distilling setting against {spec.baseline}, test, each at its chosen lr, seeds "
        f"{_seeds(seeds)}; mean [95% CI], paired difference (setting - {spec.baseline}):**",
        "",
        "| setting | lr | caption F1 | F1 difference | CE | CE difference |",
        "|---|---|---|---|---|---|",
    ]
    for m in names:
        f1 = values(runs, m, best[m], seeds, "test", "caption_f1")
        ce = values(runs, m, best[m], seeds, "test", "ce")
        d = diffs.get(f"{m} - {spec.baseline}")
        df1, dce = (d["caption_f1"].format(), d["ce"].format()) if d else ("-", "-")
        label = spec.method(m).label
        lines.append(
            f"| {m} ({label}) | {best[m]:g} | {_iv(f1.values())} | {df1} | {_iv(ce.values())} | {dce} |"
        )
    return lines


def format_arms(data: Mapping[str, Any], spec: SweepSpec) -> list[str]:
    """One table per arm pair (:func:`arm_pairs`) the results file holds, with the paired difference
    and the ratio of median training wall-clock."""
    chosen = data.get("best")
    if not chosen:
        return []
    runs, best, best_lr = data["runs"], chosen["method"], float(chosen["lr"])
    # the phase arms run at their own continuation rates once chosen on val; without that selection
    # (older files) they ran at best_lr
    phase_lr = chosen_phase_rates(runs, spec)
    lrs = {best: best_lr, **(phase_lr or {})}
    lines: list[str] = format_phase_selection(runs, spec, list(phase_lr)) if phase_lr else []
    for arm, other, title in arm_pairs(spec):
        other = best if other == "best" else other
        la, lo = lrs.get(arm, best_lr), lrs.get(other, best_lr)
        seeds = complete_seeds(
            runs, spec, [(arm, la), (other, lo)], [p.seed for p in arm_points(spec, arm, la)]
        )
        if not seeds:
            continue
        rates = f"lr {la:g}" if la == lo else f"lr {la:g} and {lo:g}"
        lines += [
            "",
            f"**{title}: {spec.method(arm, best, best_lr).label} ({rates}) vs {other}, test, "
            f"seeds {', '.join(map(str, seeds))}:**",
            "",
            "| run | lr | caption F1 per seed | CE per seed | train s per seed |",
            "|---|---|---|---|---|",
        ]
        for name, lr in ((arm, la), (other, lo)):
            f1 = values(runs, name, lr, seeds, "test", "caption_f1")
            ce = values(runs, name, lr, seeds, "test", "ce")
            walls = _walls(runs, name, lr, seeds)
            lines.append(
                f"| {name} | {lr:g} | {_per_seed(f1, seeds)} | {_per_seed(ce, seeds)} | "
                + (" / ".join(f"{w:.0f}" for w in walls) or "-")
                + " |"
            )
        cells = _paired_cells(runs, spec, (arm, la), (other, lo), seeds) if len(seeds) >= 2 else []
        wa, wb = _walls(runs, arm, la, seeds), _walls(runs, other, lo, seeds)
        if wa and wb:
            cells.append(f"median train wall-clock ratio {statistics.median(wa) / statistics.median(wb):.2f}")
        lines += ["", f"Paired ({arm} - {other}): " + "; ".join(cells) + "."]
    return lines


# ---------------------------------------------------------------------------- learning curves


def curve_axes(spec: SweepSpec) -> dict[str, tuple[str, tuple[int, ...], int, str]]:
    """axis -> (point tag, the other values, the full value (the headline runs), x label); the step axis
    takes the longer runs (``long_steps``) too."""
    longer = () if spec.long_steps is None else (spec.long_steps,)
    return {
        "pool": ("p", spec.pools, spec.full_pool, "teacher-written pool rows (beside 32 labels)"),
        "steps": (
            "s",
            (*spec.step_budgets, *longer),
            int(spec.setting["max_steps"]),
            "optimizer steps (each run its own schedule)",
        ),
    }


def curve_rows(data: Mapping[str, Any], spec: SweepSpec, axis: str = "pool") -> list[dict[str, Any]]:
    """(x, method, seed, caption_f1, ce) of the baseline and the best distiller along ``axis`` (``pool``
    or ``steps``) for what the results hold; the full value is the headline runs, on the curve seeds."""
    chosen = data.get("best")
    if not chosen:
        return []
    tag, others, full, _ = curve_axes(spec)[axis]
    runs = data["runs"]
    best_lr = {spec.baseline: float(chosen["baseline_lr"]), chosen["method"]: float(chosen["lr"])}
    out = []
    for x in (*others, full):
        for m, lr in best_lr.items():
            name = m if x == full else f"{m}@{tag}{x}"
            for s in spec.curve_seeds:
                entry = runs.get(Point(name, lr, s).key, {}).get("test")
                if entry and all(entry.get(k) is not None for k in spec.report_metrics):
                    out.append(
                        {axis: x, "method": m, "seed": s, **{k: entry[k] for k in spec.report_metrics}}
                    )
    return out


def format_curve(data: Mapping[str, Any], spec: SweepSpec, axis: str = "pool") -> list[str]:
    rows = curve_rows(data, spec, axis)
    if not rows or len({r[axis] for r in rows}) < 2:
        return []
    base, best = spec.baseline, data["best"]["method"]
    what = {
        "pool": "teacher-written pool rows beside the 32 labels (subsets of one cache)",
        "steps": "optimizer steps (a run of that many steps, its own cosine schedule; pool 1,000)",
    }[axis]
    lines = [
        "",
        f"**Learning curve over {what}, test, seeds {', '.join(map(str, spec.curve_seeds))}, each method "
        "at the lr chosen at the full setting; mean [95% CI], paired difference "
        f"{best} - {base}:**",
        "",
        f"| {axis} | {base} F1 | {best} F1 | F1 difference | {base} CE | {best} CE | CE difference |",
        "|---|---|---|---|---|---|---|",
    ]
    for x in sorted({r[axis] for r in rows}):
        cells = [str(x)]
        for k in spec.report_metrics:
            per = {
                m: {r["seed"]: float(r[k]) for r in rows if r[axis] == x and r["method"] == m}
                for m in (base, best)
            }
            both = sorted(set(per[base]) & set(per[best]))
            cells += [_iv(per[base].values()), _iv(per[best].values())]
            cells.append(
                paired_difference({s: per[best][s] for s in both}, {s: per[base][s] for s in both}).format()
                if len(both) >= 2
                else "-"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_curves(data: Mapping[str, Any], spec: SweepSpec, stem: Path) -> list[Path]:
    """``<stem>_curve_<axis>.csv`` per axis with points (``dvc plots`` reads them) and ``<stem>_curves.png``
    (mean and 95% interval, caption F1 and CE, one row of panels per axis); [] when there is no curve."""
    every = {a: curve_rows(data, spec, a) for a in curve_axes(spec)}
    axes = {a: rows for a, rows in every.items() if len({r[a] for r in rows}) >= 2}
    if not axes:
        return []
    written = []
    stem.parent.mkdir(parents=True, exist_ok=True)
    for axis, rows in axes.items():
        path = stem.with_name(f"{stem.name}_curve_{axis}.csv")
        with atomic_write(path, newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=[axis, "method", "seed", *spec.report_metrics])
            w.writeheader()
            w.writerows(rows)
        written.append(path)
    import matplotlib

    matplotlib.use("Agg")  # no display on CI machines
    import matplotlib.pyplot as plt

    n = len(spec.report_metrics)
    fig, grid = plt.subplots(len(axes), n, figsize=(5 * n, 3.4 * len(axes)), squeeze=False)
    for panels, (axis, rows) in zip(grid, axes.items(), strict=True):
        for ax, k in zip(panels, spec.report_metrics, strict=True):
            for m in dict.fromkeys(r["method"] for r in rows):
                xs = sorted({r[axis] for r in rows if r["method"] == m})
                ivs = [
                    mean_interval([float(r[k]) for r in rows if r["method"] == m and r[axis] == x])
                    for x in xs
                ]
                lo = [iv.mean - iv.low if iv.n > 1 else 0.0 for iv in ivs]
                hi = [iv.high - iv.mean if iv.n > 1 else 0.0 for iv in ivs]
                ax.errorbar(xs, [iv.mean for iv in ivs], yerr=[lo, hi], marker="o", capsize=3, label=m)
            if axis == "pool":
                ax.set_xscale("symlog", linthresh=100)
            ax.set_xlabel(curve_axes(spec)[axis][3])
            ax.set_ylabel({"caption_f1": "caption F1 (test)", "ce": "CE, nats/token (test)"}.get(k, k))
            ax.grid(alpha=0.3)
        panels[0].legend(fontsize=8)
    fig.suptitle("mean and 95% t-interval over seeds " + ", ".join(map(str, spec.curve_seeds)), fontsize=9)
    fig.tight_layout()
    png = stem.with_name(f"{stem.name}_curves.png")
    with atomic_path(png) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return [*written, png]


# --------------------------------------------------------------------------------------- all


def format_report(data: Mapping[str, Any], spec: SweepSpec) -> str:
    """Markdown: the val grid, the chosen rates, the headline with its paired differences, the arms of
    the best distiller and the learning curve, each only as far as the results file holds it."""
    runs, setting = data["runs"], data.get("setting") or spec.setting
    lines = [
        f"Setting: {', '.join(f'{k} {v}' for k, v in setting.items())}.",
        "",
        *format_selection(runs, spec),
    ]
    try:
        best = choose_learning_rates(runs, spec)
    except ValueError as e:
        return "\n".join([*lines, "", f"(selection incomplete: {e})"]) + "\n"
    winner = best_offline(runs, spec, best)
    lines += [
        "",
        "Chosen (val): " + ", ".join(f"{m} lr {lr:g}" for m, lr in best.items()) + ".",
        f"Best distiller (val): {winner} at lr {best[winner]:g}: {spec.method(winner).label}.",
        "",
        *format_headline(runs, spec, best),
        *format_long(data, spec),
        *format_knobs(runs, spec, best),
        *format_arms(data, spec),
        *format_curve(data, spec, "pool"),
        *format_curve(data, spec, "steps"),
    ]
    return "\n".join(lines) + "\n"
