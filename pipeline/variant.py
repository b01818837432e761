"""The trainer variants (``custom.trainer_variant``): what each one reads and when it needs the teacher.

One object per user-facing name, so callers ask the variant (``variant.reads_cache``,
``variant.needs_live_teacher(lmbda)``) instead of comparing names. The names stay what configs say:
``sft``, ``gkd_cached``, ``gkd_monitor``. Below ``train/`` because the config, the cache stage and the
dry run ask these questions too (the cache stage imports no training code).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class TrainerVariant:
    """A trainer variant: ``name`` as configs spell it, and what it reads.

    ``distils``: a KD term at all (False: cross-entropy only). ``reads_cache``: dataset batches take the
    teacher's top-k from ``custom.teacher_cache``. ``live_every_batch``: the live teacher scores every
    training batch (the full distribution, no cache).
    """

    name: str
    distils: bool
    reads_cache: bool
    live_every_batch: bool

    def needs_live_teacher(self, lmbda: float, onpolicy_cached: bool = False) -> bool:
        """Whether training loads the live teacher: every batch, or the on-policy ones (``lmbda > 0``)
        unless those come from a student-written cache (``onpolicy_cached``: ``custom.onpolicy_cache``)."""
        return self.live_every_batch or (self.distils and lmbda > 0 and not onpolicy_cached)

    def __str__(self) -> str:
        return self.name


SFT = TrainerVariant("sft", distils=False, reads_cache=False, live_every_batch=False)
GKD_MONITOR = TrainerVariant("gkd_monitor", distils=True, reads_cache=False, live_every_batch=True)
GKD_CACHED = TrainerVariant("gkd_cached", distils=True, reads_cache=True, live_every_batch=False)
VARIANTS = {v.name: v for v in (SFT, GKD_MONITOR, GKD_CACHED)}


def trainer_variant(name: str) -> TrainerVariant:
    """The variant a config names; ``ConfigError`` listing the names for any other."""
    if name not in VARIANTS:
        raise ConfigError(f"custom.trainer_variant: unknown {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]
