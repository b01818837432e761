"""The training output folder never keeps a link to a checkpoint that rotation deleted."""

from __future__ import annotations

from pathlib import Path


def test_a_last_checkpoint_link_to_a_deleted_checkpoint_is_removed_and_a_live_one_kept(
    tmp_path: Path,
) -> None:
    from pipeline.train.sft_pipeline import drop_dangling_last_checkpoint

    (tmp_path / "checkpoint-1400").mkdir()
    link = tmp_path / "last-checkpoint"
    link.symlink_to("checkpoint-1500")  # what ms-swift left when rotation kept the best (1400)
    assert drop_dangling_last_checkpoint(str(tmp_path)) is True
    assert not link.is_symlink() and (tmp_path / "checkpoint-1400").is_dir()
    link.symlink_to("checkpoint-1400")
    assert drop_dangling_last_checkpoint(str(tmp_path)) is False and link.resolve() == (
        tmp_path / "checkpoint-1400"
    )
    assert drop_dangling_last_checkpoint(str(tmp_path / "missing")) is False
