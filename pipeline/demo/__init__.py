"""Self-contained demo assets: tiny Qwen2.5-VL teacher and student models and a synthetic
dense-captioning dataset, built offline and deterministically from a seed.

``build_demo_assets`` writes everything; ``pipeline.demo.captions`` parses and scores captions and
imports nothing heavy (torch and transformers load only when assets are built).
"""

from .assets import DEFAULT_SPLIT_SIZES, build_demo_assets

__all__ = ["DEFAULT_SPLIT_SIZES", "build_demo_assets"]
