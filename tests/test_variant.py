"""The trainer variants: what each reads, and when training loads the live teacher."""

from __future__ import annotations

import pytest

from pipeline.errors import ConfigError
from pipeline.variant import GKD_CACHED, GKD_MONITOR, SFT, VARIANTS, trainer_variant


def test_config_names_stay_the_user_facing_ones() -> None:
    assert list(VARIANTS) == ["sft", "gkd_monitor", "gkd_cached"]
    assert [trainer_variant(n) for n in VARIANTS] == [SFT, GKD_MONITOR, GKD_CACHED]
    with pytest.raises(ConfigError, match="unknown 'kd'; choose one of sft, gkd_monitor, gkd_cached"):
        trainer_variant("kd")


@pytest.mark.parametrize(
    "variant,offline,on_policy", [(SFT, False, False), (GKD_MONITOR, True, True), (GKD_CACHED, False, True)]
)
def test_live_teacher_is_needed_per_variant_and_lmbda(variant, offline: bool, on_policy: bool) -> None:
    assert variant.needs_live_teacher(0.0) is offline
    assert variant.needs_live_teacher(0.3) is on_policy


def test_only_the_cached_variant_reads_the_cache() -> None:
    assert [v.reads_cache for v in (SFT, GKD_MONITOR, GKD_CACHED)] == [False, False, True]
    assert [v.distils for v in (SFT, GKD_MONITOR, GKD_CACHED)] == [False, True, True]
