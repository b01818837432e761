"""Self-contained demo: tiny Qwen2.5-VL models and a synthetic dense-captioning dataset, built offline
and deterministically from a seed (``pipeline.demo.assets.build_demo_assets``), plus the demo's caption
metric (``pipeline.demo.captions``). Nothing in the library imports this package, and this file imports
nothing, so importing one demo module never drags in the scene renderer or the model builders.
"""
