"""The evidence sweep over one cache: each method's learning rate chosen on a few seeds by the VAL
split, then the methods compared at their own best rates on more seeds, paired by seed, on TEST, and
the arms measured from the best distiller (on-policy phase, live teacher, lmbda throughout, smaller
pools). ``distill evidence <phase>`` drives it (:mod:`pipeline.commands.evidence`); the tables and the
figure are :mod:`pipeline.evidence.report`.

It needs what ``dvc repro`` builds up to ``export_written`` (the teacher, ``runs/demo/cache_written``,
``runs/demo/written``, ``data/prepared``). Every run is ``distill train`` + ``distill evaluate`` on
the config ``distill resolve`` writes for a run of ``params.yaml``, with the method's knobs, the
learning rate, the seed and a per-seed student init (``distill init-student --seed``) set on the
command line, so one seed means the same fresh layers *and* the same data order for every method:
that is what makes the per-seed differences paired (:mod:`pipeline.evidence.stats`).

Why this shape:

- Every method gets its rate from the same grid, chosen by the same rule: the highest mean val caption
  F1 over the selection seeds, ties to the lower mean val CE, then to the lower rate
  (:func:`choose_learning_rate`). The test split is evaluated only for the headline runs, after the
  choice, so it cannot leak into it.
- Each finished evaluation is written to the results file (a few KB of JSON, committed) at once; a
  rerun skips every (method, lr, seed, split) already there and every training whose model is still
  in ``--work``, so an interrupted sweep resumes and the report is rebuilt from the file alone.
- The results file records the setting it was measured at (task, steps, pool, the teacher's weights
  digest); a run at another setting, or against another teacher, refuses to mix into it.

Pure planning and selection functions first; the subprocess calls at the bottom, behind a ``Runner``
that the tests replace.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import statistics
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from pipeline.config import load_yaml
from pipeline.data import Row, read_split_rows, write_rows
from pipeline.errors import ConfigError
from pipeline.files import atomic_write
from pipeline.hashing import file_sha256

log = logging.getLogger(__name__)

SPLITS = ("val", "test")
KEPT_METRICS = ("caption_f1", "ce", "token_accuracy", "bleu4", "rouge_l", "hallucination_rate", "rows_scored")


@dataclass(frozen=True)
class Method:
    """A student recipe: the ``params.yaml`` run whose resolved config it trains, plus ``--set`` knobs.

    ``start``: a method whose model (same seed) this one continues from, trained at ``start_lr`` (None:
    at this point's own lr). ``pool``: train on the labels plus only the first ``pool`` teacher-written
    rows (a subset of the same cache), not the run's whole file.
    """

    name: str
    run: str
    sets: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""
    start: str | None = None
    pool: int | None = None
    start_lr: float | None = None


def _gkd(beta: float, sft_alpha: float) -> Method:
    name = f"gkd_b{beta:g}_a{sft_alpha:g}".replace("0.", "0")
    kl = {0.0: " (forward KL)", 1.0: " (reverse KL)"}.get(beta, "")
    return Method(
        name,
        "student_gkd_written",
        {"rlhf.beta": beta, "rlhf.sft_alpha": sft_alpha},
        f"cached GKD, beta {beta:g}{kl}, sft_alpha {sft_alpha:g}",
    )


@dataclass(frozen=True)
class SweepSpec:
    """What the sweep runs.

    ``baseline`` is the method every other one is compared with, by seed; ``references`` are compared
    against too but are never the best distiller. The arms (:data:`ARMS`) and the curve points
    (``<method>@p<pool>``, ``<method>@s<steps>``) are derived from the best distilling method once the
    headline has chosen it.
    """

    methods: tuple[Method, ...] = (
        Method("sft_written", "student_sft_written", {}, "SFT on the teacher-written text"),
        Method("sft_labels", "student_sft", {}, "SFT on the 32 labels alone"),
        *(_gkd(b, a) for a in (0.0, 0.5) for b in (0.0, 0.5, 1.0)),
    )
    baseline: str = "sft_written"
    references: tuple[str, ...] = ("sft_labels",)
    learning_rates: tuple[float, ...] = (1e-3, 3e-3, 1e-2)
    select_seeds: tuple[int, ...] = (0, 1)
    headline_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    knob_seeds: tuple[int, ...] = (0, 1, 2)  # every distilling setting on test, beside the baseline
    select_metric: str = "caption_f1"  # higher is better
    tiebreak_metric: str = "ce"  # lower is better
    report_metrics: tuple[str, ...] = ("caption_f1", "ce")
    phase_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # the on-policy phase against the same offline steps
    phase_steps: int = 60
    phase_lmbda: float = 0.5
    # A continuation's rate is its own knob: each phase arm picks it from this grid on val, like a method
    # (restarting warmup + cosine at the offline rate alone moved test F1 by -0.10..+0.23 per seed).
    phase_learning_rates: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
    live_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # the best setting with the live teacher, not the cache
    mixed_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # the best setting with lmbda mixed in throughout
    mixed_lmbda: float = 0.5
    pools: tuple[int, ...] = (0, 100, 300)  # the learning curve's smaller pools (the full one: headline)
    full_pool: int = 1000
    curve_seeds: tuple[int, ...] = (0, 1, 2)
    pool_run: str = "student_gkd_written"  # whose train file orders the pool (labels first)
    step_budgets: tuple[int, ...] = (100, 200)  # the curve over steps: shorter runs, own schedule each
    # The headline pair again at long_steps, each at the rate it was chosen at max_steps, on long_seeds:
    # whether a longer schedule closes the seed spread (its runs are the step curve's point there too).
    long_steps: int | None = 600
    long_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    setting: Mapping[str, Any] = field(
        default_factory=lambda: {
            "task": "exact",
            "max_steps": 300,
            "rows": "32 labels + 1,000 teacher-written",
            "student_init": "distill init-student --num-layers 2 --seed <seed>",
        }
    )

    def method(self, name: str, best: str | None = None, best_lr: float | None = None) -> Method:
        """A listed method, a curve point (``<method>@p<pool>``: the first ``pool`` teacher-written rows;
        ``<method>@s<steps>``: a run of ``steps`` optimizer steps), or an arm of the ``best`` method
        (trained at ``best_lr``: the phase arms start from that model)."""
        if "@p" in name:
            base, pool = name.rsplit("@p", 1)
            m = self.method(base, best, best_lr)
            return replace(m, name=name, pool=int(pool), label=f"{m.label}, pool {pool}")
        if "@s" in name:
            base, steps = name.rsplit("@s", 1)
            m = self.method(base, best, best_lr)
            sets = {**m.sets, "train.max_steps": int(steps)}
            return replace(m, name=name, sets=sets, label=f"{m.label}, {steps} steps")
        if name in ARMS or _PHASE_FROM.fullmatch(name):
            if best is None:
                raise KeyError(f"{name} needs the best distilling method")
            return arm_method(self, name, self.method(best), best_lr)
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(f"no method {name!r}; methods: {[m.name for m in self.methods]}")

    def distillers(self) -> list[str]:
        return [m.name for m in self.methods if m.name != self.baseline and m.name not in self.references]


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


def teacher_digest(teacher: Path) -> str | None:
    """The first 16 hex digits of the sha256 of the teacher's weights (of the weight files' sha256s
    when there are several), or None without a teacher.

    Every student depends on the teacher (its init copies the teacher's tower, embeddings and head; the
    written captions and the cache are the teacher's), and a teacher retrained elsewhere need not be
    bit-identical, so a results file records which teacher its runs were measured against."""
    digests = [file_sha256(w) for w in sorted(teacher.glob("*.safetensors"))]
    if not digests:
        return None
    if len(digests) == 1:
        return digests[0][:16]
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def load_results(path: Path, spec: SweepSpec) -> dict[str, Any]:
    """The results file (or an empty one at ``spec.setting``); refuses one measured at another setting.

    A spec without a ``teacher`` (a report from the file alone, no teacher here) takes the file's."""
    if not path.is_file():
        return {"setting": dict(spec.setting), "runs": {}}
    data = _read_results(path)
    want = dict(spec.setting)
    if "teacher" not in want and "teacher" in (data.get("setting") or {}):
        want["teacher"] = data["setting"]["teacher"]
    if data.get("setting") != want:
        raise ConfigError(
            f"{path} was measured at {data.get('setting')}, this sweep runs {want}: "
            "use another --results file"
        )
    data.setdefault("runs", {})
    return data


def _read_results(path: Path) -> dict[str, Any]:
    """The results file's JSON, its shape checked down to each metric (what the report reads), so a
    file cut mid-write or edited by hand is one ``ConfigError`` naming it, never a traceback."""
    fix = "restore it (git checkout) or move it away to measure again"
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a results file (not UTF-8: byte at offset {exc.start}); {fix}"
        ) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: not a results file (invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}); {fix}"
        ) from None

    def refuse(where: str, what: str, value: Any) -> NoReturn:
        shown = f"a {type(value).__name__}" if isinstance(value, (dict, list)) else repr(value)
        raise ConfigError(f"{path}: {where}expected {what}, got {shown}; {fix}")

    if not isinstance(data, dict):
        refuse("", "a JSON object with 'setting' and 'runs'", data)
    if not isinstance(data.get("setting", {}), dict):
        refuse("setting: ", "an object", data["setting"])
    if not isinstance(data.get("runs", {}), dict):
        refuse("runs: ", "an object of run -> results", data["runs"])
    for key, run in data.get("runs", {}).items():
        if not isinstance(run, dict):
            refuse(f"runs[{key!r}]: ", "an object of split -> metrics", run)
        for split, metrics in run.items():
            if not isinstance(metrics, dict):
                continue  # method, lr, seed, train_wall_s: recorded for readers, not read back
            for name, value in metrics.items():
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    refuse(f"runs[{key!r}].{split}.{name}: ", "a number or null", value)
    return data


def save_results(path: Path, data: Mapping[str, Any]) -> None:
    """Rewrite the results file whole (a temporary file renamed over it): a kill or a full disk leaves
    the last complete version, and a full disk is one line."""
    with atomic_write(path) as fh:
        fh.write(json.dumps(data, indent=1, sort_keys=True) + "\n")


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


def choose_learning_rate(
    runs: Mapping[str, Any], spec: SweepSpec, method: str, grid: Sequence[float] | None = None
) -> float:
    """The method's rate in ``grid`` (default ``spec.learning_rates``) with the best mean val
    ``select_metric`` over exactly the selection seeds.

    Ties go to the lower mean val ``tiebreak_metric``, then to the lower rate. Only the val split is
    read; a rate missing a seed is an error (the choice is never made on different draws).
    """
    scores = {}
    for lr in spec.learning_rates if grid is None else grid:
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
    """The baseline, the references and the distilling method that is best on val (:func:`best_offline`)."""
    return [spec.baseline, *spec.references, best_offline(runs, spec, best_lr)]


def headline_points(spec: SweepSpec, best_lr: Mapping[str, float], methods: Sequence[str]) -> list[Point]:
    """The headline methods at their own best rates on the headline seeds (selection seeds reused)."""
    return [Point(m, best_lr[m], s) for s in spec.headline_seeds for m in methods]


def knob_points(spec: SweepSpec, best_lr: Mapping[str, float]) -> list[Point]:
    """The baseline and every distilling setting (the beta x sft_alpha grid) at its own chosen rate on
    the knob seeds, seed-major; the headline runs are among them and are reused."""
    names = [spec.baseline, *spec.distillers()]
    return [Point(m, best_lr[m], s) for s in spec.knob_seeds for m in names]


def best_offline(runs: Mapping[str, Any], spec: SweepSpec, best_lr: Mapping[str, float]) -> str:
    """The distilling method with the best mean val F1 at its chosen rate, ties by val CE."""

    def score(m: str) -> tuple[float, float]:
        f1 = values(runs, m, best_lr[m], spec.select_seeds, "val", spec.select_metric)
        ce = values(runs, m, best_lr[m], spec.select_seeds, "val", spec.tiebreak_metric)
        return (-statistics.fmean(f1.values()), statistics.fmean(ce.values()))

    return min(spec.distillers(), key=score)


# ----------------------------------------------------------------- arms of the best distiller

ARMS = ("phase_onpolicy", "phase_offline", "live", "mixed")
"""What is measured from the best offline setting (``best``, at its lr):

- ``phase_onpolicy`` / ``phase_offline``: ``phase_steps`` more steps from ``best``'s trained model,
  with ``lmbda = phase_lmbda`` (on-policy batches: the student samples, the live teacher scores) or 0
  (the same number of offline steps from the same start);
- ``phase_onpolicy_from<N>`` / ``phase_offline_from<N>``: the same pair from ``best``'s model at
  ``N = long_steps`` steps (``<best>@s<N>``), a student whose seeds have converged, so a small
  difference shows (:func:`phase_arm_groups`);
- ``live``: ``best``'s loss from the same init, the live teacher in place of the cache (same rows);
- ``mixed``: ``best``'s run with ``lmbda = mixed_lmbda`` throughout.
"""

ARM_PAIRS = (
    ("phase_onpolicy", "phase_offline", "On-policy phase against the same offline steps"),
    ("live", "best", "Live teacher against the cache, same rows, steps and seed"),
    ("mixed", "best", "lmbda mixed in throughout against offline"),
)


def arm_method(spec: SweepSpec, arm: str, best: Method, best_lr: float | None = None) -> Method:
    """An arm of ``best`` (trained at ``best_lr``, which the phase arms continue from)."""
    phase = _PHASE_FROM.fullmatch(arm)
    if phase:
        lmbda = spec.phase_lmbda if phase[1] == "phase_onpolicy" else 0.0
        sets = {**best.sets, "rlhf.lmbda": lmbda, "train.max_steps": spec.phase_steps}
        start = best.name if phase[2] is None else f"{best.name}@s{phase[2]}"
        trained = f" (trained at lr {best_lr:g})" if best_lr is not None else ""
        label = f"{spec.phase_steps} more steps of {start}{trained}, lmbda {lmbda:g}"
        return Method(arm, best.run, sets, label, start=start, start_lr=best_lr)
    if arm == "live":
        return Method(arm, "student_gkd_live", dict(best.sets), f"{best.name} with the live teacher")
    if arm == "mixed":
        sets = {**best.sets, "rlhf.lmbda": spec.mixed_lmbda}
        return Method(arm, best.run, sets, f"{best.name} with lmbda {spec.mixed_lmbda:g} throughout")
    raise KeyError(f"no arm {arm!r}; arms: {ARMS}")


def arm_points(spec: SweepSpec, arm: str, lr: float) -> list[Point]:
    seeds = {"live": spec.live_seeds, "mixed": spec.mixed_seeds}.get(arm, spec.phase_seeds)
    return [Point(arm, lr, s) for s in seeds]


PHASE_ARMS = ("phase_onpolicy", "phase_offline")
_PHASE_FROM = re.compile(r"(phase_onpolicy|phase_offline)(?:_from(\d+))?")


def phase_arm_groups(spec: SweepSpec) -> list[tuple[str, str]]:
    """The on-policy phase's arm pairs: from the headline's students, and, when ``long_steps`` is set,
    from the longer runs' (``phase_onpolicy_from<long_steps>``: the start is in the name, so results of
    another ``--long-steps`` never mix in)."""
    groups = [PHASE_ARMS]
    if spec.long_steps is not None:
        on, off = (f"{a}_from{spec.long_steps}" for a in PHASE_ARMS)
        groups.append((on, off))
    return groups


def arm_pairs(spec: SweepSpec) -> list[tuple[str, str, str]]:
    """:data:`ARM_PAIRS` with the on-policy pair from the longer runs' students after the first."""
    pairs = list(ARM_PAIRS)
    for on, off in phase_arm_groups(spec)[1:]:
        title = f"On-policy phase from the {spec.long_steps}-step students against the same offline steps"
        pairs.insert(1, (on, off, title))
    return pairs


def phase_selection_points(spec: SweepSpec, arms: Sequence[str] = PHASE_ARMS) -> list[Point]:
    """Both arms of a phase pair over the continuation grid on the selection seeds (val), seed-major."""
    return [Point(a, lr, s) for s in spec.select_seeds for lr in spec.phase_learning_rates for a in arms]


def choose_phase_learning_rates(
    runs: Mapping[str, Any], spec: SweepSpec, arms: Sequence[str] = PHASE_ARMS
) -> dict[str, float]:
    """Each phase arm's continuation rate, chosen on val like a method's (:func:`choose_learning_rate`)."""
    return {a: choose_learning_rate(runs, spec, a, spec.phase_learning_rates) for a in arms}


def chosen_phase_rates(runs: Mapping[str, Any], spec: SweepSpec) -> dict[str, float] | None:
    """The phase arms' continuation rates, for each pair whose selection points all have their val
    metrics; None when no pair's have (the rates are read from the runs, never from a stored choice a
    later phase could overwrite)."""
    out: dict[str, float] = {}
    for arms in phase_arm_groups(spec):
        if all("val" in runs.get(p.key, {}) for p in phase_selection_points(spec, arms)):
            out.update(choose_phase_learning_rates(runs, spec, arms))
    return out or None


def phase_points(spec: SweepSpec, phase_lr: Mapping[str, float]) -> list[Point]:
    """Each arm of ``phase_lr`` at its own continuation rate, seed-major (a cut-short phase has whole
    pairs)."""
    return [Point(arm, lr, s) for s in spec.phase_seeds for arm, lr in phase_lr.items()]


def long_points(spec: SweepSpec, best_lr: Mapping[str, float], best: str) -> list[Point]:
    """The baseline and ``best`` at ``long_steps`` (``<method>@s<long_steps>``) and at the headline's steps
    (what they are compared with: the headline's runs, skipped where they ran), each at the rate chosen
    at the headline's steps, seed-major; [] when ``long_steps`` is None."""
    if spec.long_steps is None:
        return []
    pair = (spec.baseline, best)
    return [
        Point(name, best_lr[m], s)
        for s in spec.long_seeds
        for m in pair
        for name in (m, f"{m}@s{spec.long_steps}")
    ]


def curve_points(spec: SweepSpec, best_lr: Mapping[str, float], best: str) -> list[Point]:
    """The baseline and ``best`` on each smaller pool and each shorter step budget, at the rates chosen
    on the full pool and steps, seed-major (the full points are the headline runs)."""
    tags = [f"p{n}" for n in spec.pools] + [f"s{n}" for n in spec.step_budgets]
    return [
        Point(f"{m}@{t}", best_lr[m], s)
        for s in spec.curve_seeds
        for t in tags
        for m in (spec.baseline, best)
    ]


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
    """Run each point's missing splits through ``runner``, saving after each; returns how many ran. A
    progress bar counts the runs left (``--quiet`` hides it)."""
    from tqdm import tqdm

    ran = 0
    pending = []
    for p in points:
        entry = data["runs"].setdefault(p.key, {"method": p.method, "lr": p.lr, "seed": p.seed})
        todo = [s for s in splits if s not in entry]
        if todo:
            pending.append((p, entry, todo))
    for p, entry, todo in tqdm(pending, desc=f"evidence runs ({'/'.join(splits)})", unit="run", leave=False):
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
    best: str | None = None  # the best distilling method, for the arms
    best_lr: float | None = None  # its chosen rate: the phase arms continue from that model

    def _env(self) -> dict[str, str]:
        return {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}

    def _call(self, cmd: list[str], output: Path) -> None:
        output.parent.mkdir(parents=True, exist_ok=True)
        log.debug("$ %s", " ".join(cmd))
        with output.open("a") as fh:
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
            cmd = ["distill", "init-student", "--teacher", str(self.teacher), "--out", str(out)]
            cmd += ["--num-layers", "2", "--seed", str(seed), "--overwrite"]
            self._call(cmd, self.work / "init.log")
        return out

    def _train_file(self, run: str) -> Path:
        files = load_yaml(self.config(run))["data"]["dataset"]
        if len(files) != 1:
            raise ValueError(f"{run}: a pool subset needs one train file, the config lists {files}")
        return Path(files[0])

    def subset(self, run: str, pool: int) -> Path:
        """``run``'s train file cut to the labels plus the first ``pool`` pool rows of ``pool_run``'s
        file, chosen by sample id, so that every method's subset holds the same images."""
        out = self.work / "data" / f"{run}-p{pool}.jsonl"
        if out.is_file():
            return out
        labelled = int(load_yaml(self.params)["demo"]["n_labelled"])
        order = [r.sample_id for r in read_split_rows([self._train_file(self.spec.pool_run)])]
        keep = set(order[: labelled + pool])
        src = self._train_file(run)
        kept = [r for r in read_split_rows([src]) if r.sample_id in keep]
        if len(kept) != len(keep):
            raise ValueError(f"{src}: {len(kept)} of the {len(keep)} subset rows are there")
        bad = [r for r in kept if not isinstance(r, Row)]
        if bad:
            raise ValueError(f"{bad[0].source}: sample {bad[0].sample_id!r} of the subset: {bad[0].detail}")
        # rewritten, not copied: image paths are relative to the file, and the subset lives elsewhere
        tmp = out.with_suffix(".tmp")
        write_rows([r for r in kept if isinstance(r, Row)], tmp)
        tmp.replace(out)
        return out

    def train(self, p: Point) -> tuple[Path, list[str]]:
        """Train ``p`` unless its model is there (a start model first, if missing); its output folder
        and the ``distill`` arguments that name its config and knobs."""
        m = self.spec.method(p.method, self.best, self.best_lr)
        out = self.work / "runs" / p.method / f"lr{p.lr:g}-s{p.seed}"
        if m.start:
            start_lr = p.lr if m.start_lr is None else m.start_lr
            init = self.train(Point(m.start, start_lr, p.seed))[0] / "final"
        else:
            init = self.init(p.seed)
        sets: dict[str, Any] = {
            **m.sets,
            "train.learning_rate": p.lr,
            "train.seed": p.seed,
            "model.model": str(init),
            "train.output_dir": str(out),
        }
        if m.pool is not None:
            sets["data.dataset"] = f"[{self.subset(m.run, m.pool)}]"
        args = ["--config", str(self.config(m.run))]
        for k, v in sets.items():
            args += ["--set", f"{k}={v}"]
        if not (out / "train_time.json").is_file():
            self._call(["distill", "train", *args], out.parent / f"lr{p.lr:g}-s{p.seed}.log")
        return out, args

    def __call__(self, p: Point, splits: Sequence[str]) -> dict[str, dict[str, Any]]:
        out, args = self.train(p)
        got: dict[str, dict[str, Any]] = {
            "train_wall_s": {"value": json.loads((out / "train_time.json").read_text())["train_wall_s"]}
        }
        for split in splits:
            path = out / f"metrics_{split}.json"
            output = out.parent / f"lr{p.lr:g}-s{p.seed}.log"
            self._call(["distill", "evaluate", *args, "--split", split, "--out", str(path)], output)
            metrics = json.loads(path.read_text())
            got[split] = {k: metrics.get(k) for k in KEPT_METRICS}
        return got
