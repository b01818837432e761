"""What a ``distill`` command shows on the console, set once per process by :func:`configure`.

The library speaks through :mod:`logging` (one logger per module, under ``pipeline``); the commands
print only their result (bench JSON, summaries). By default a user sees the progress bars, the
project's own INFO lines (plans, summaries) and every library's warnings; ms-swift's and transformers'
INFO chatter (``Setting ...: You can adjust this hyperparameter through the environment variable``,
each model load announced) is held back. ``--verbose`` brings it back with logger names;
``--quiet`` shows errors alone (no progress bars, no warnings).

The libraries read their levels from the environment when they are first imported (ms-swift's
``LOG_LEVEL``, ``TRANSFORMERS_VERBOSITY``, tqdm's ``TQDM_DISABLE``), and the commands import them
lazily, after this runs; the environment also carries the choice into the processes a command starts
(torchrun workers, the evidence sweep's runs).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

__all__ = ["DEFAULT", "QUIET", "VERBOSE", "bars_hidden", "configure", "inherited"]

QUIET, DEFAULT, VERBOSE = -1, 0, 1

_LIBRARIES = ("swift", "transformers", "datasets", "accelerate", "deepspeed", "torch", "modelscope", "peft")


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler on whatever ``sys.stderr`` is when a line is logged (a test's capture, a redirect)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


class _CheckedTrust(logging.Filter):
    """Drops ms-swift's "Loading ... with trust_remote_code=True" warnings: its loader passes that flag
    for every directory, and this project checks each directory first (:mod:`pipeline.trust`), so no
    shipped code runs unless the config allows it. ``--verbose`` keeps them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "with trust_remote_code=True" not in record.getMessage()


_TRUST_FILTER = _CheckedTrust()


def _library_level(verbosity: int) -> int:
    return {QUIET: logging.ERROR, DEFAULT: logging.WARNING, VERBOSE: logging.INFO}[verbosity]


def configure(verbosity: int = DEFAULT) -> None:
    """Route the project's log lines to stderr and set every library's level for ``verbosity``
    (:data:`QUIET`, :data:`DEFAULT`, :data:`VERBOSE`), here and in the processes this one starts. An
    explicit environment setting (``LOG_LEVEL``, ``TRANSFORMERS_VERBOSITY``) is kept."""
    own = {QUIET: logging.ERROR, DEFAULT: logging.INFO, VERBOSE: logging.DEBUG}[verbosity]
    library = _library_level(verbosity)
    name = logging.getLevelName(library)
    os.environ.setdefault("LOG_LEVEL", name)  # ms-swift's loggers, at their import
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", name.lower())
    os.environ.setdefault("DATASETS_VERBOSITY", name.lower())
    os.environ["DISTILL_VERBOSITY"] = str(verbosity)
    if verbosity == QUIET:
        os.environ["TQDM_DISABLE"] = "1"
        warnings.simplefilter("ignore")
    handler = _Stderr()
    fmt = "%(levelname)s %(name)s: %(message)s" if verbosity == VERBOSE else "%(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    project = logging.getLogger("pipeline")
    project.handlers[:] = [handler]
    project.setLevel(own)
    logging.getLogger().setLevel(library)  # what propagates to the root (lastResort prints WARNING+)
    logging.captureWarnings(verbosity != QUIET)
    for lib in _LIBRARIES:  # those already imported (a test process, a worker) follow too
        logging.getLogger(lib).setLevel(library)
    swift = logging.getLogger("swift")  # the object ms-swift configures when it is imported later
    if verbosity == VERBOSE:
        swift.removeFilter(_TRUST_FILTER)
    else:
        swift.addFilter(_TRUST_FILTER)


def bars_hidden() -> bool:
    """``--quiet`` (or ``TQDM_DISABLE``): for a bar whose ``disable`` is computed, which tqdm's own
    environment default would not override."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")


def inherited() -> int:
    """The verbosity a parent ``distill`` chose (carried in ``DISTILL_VERBOSITY``), else the default:
    for entry points started by a command (torchrun workers, bench subprocesses)."""
    try:
        value = int(os.environ.get("DISTILL_VERBOSITY", DEFAULT))
    except ValueError:
        return DEFAULT
    return value if value in (QUIET, DEFAULT, VERBOSE) else DEFAULT
