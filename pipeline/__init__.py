"""Cached-teacher offline distillation for vision-language models on ms-swift.

Importing this package is cheap: heavy libraries (torch, transformers, ms-swift)
are imported by the modules that need them, never here.
"""

__version__ = "0.1.0"
