"""User-facing errors: raised anywhere, printed by the CLI as one line with a non-zero exit code.

A small hierarchy in the huggingface_hub style, so that a library caller can tell the causes apart; every class
is a ``LayerPruneError`` (one actionable line, exit code 2) and also the matching built-in where there is one:

- ``ConfigError`` (``ValueError``): a bad option, recipe value or combination of options, including options that
  do not fit the model (``--drop`` against its layer count) or this machine (no CUDA, no bitsandbytes), and a
  missing or unreadable file an option names (a recipe, calibration or perplexity text);
- ``UnsupportedModel``: a model with a feature that what was asked cannot handle (a RoPE type, biases, sliding
  windows, MoE MLPs, a split GGUF, a family without sub-layer or GGUF support); the message names what to use
  instead. ``UnsupportedArchitecture`` (also a ``ConfigError``) is its case of a ``model_type`` with no adapter;
- ``CheckpointError``: a model folder or file that is missing, truncated, corrupt or inconsistent;
- ``OutputError``: an output that may not be written or published (exists, is the source, read-only or full
  filesystem, a file holding the token);
- ``HubAccessError`` (``PermissionError``): a missing, invalid or too weak token, a gated or private repo;
- ``HubError``: any other failure talking to the Hub (after retries), including a download of calibration or
  benchmark data and a pushed copy that does not read back as the local one;
- ``StageError``: a stage whose input from an earlier stage, or whose own result, fails a consistency check (no
  unpruned copy kept, a fused correction that changed the outputs, lm-eval returning no numbers): a bug or a
  changed dependency rather than the user's input.

Every raise names the class of its cause: no module raises the bare ``LayerPruneError`` (tests/test_errors.py).
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class LayerPruneError(Exception):
    """An error caused by the user's input or environment; its message is one actionable line."""

    exit_code = 2


class ConfigError(LayerPruneError, ValueError):
    """A bad option, recipe value or combination of options."""


class UnsupportedModel(LayerPruneError):
    """The model has a feature that what was asked cannot handle; the message names what to use instead."""


class UnsupportedArchitecture(ConfigError, UnsupportedModel):
    """The model's family has no architecture adapter."""


class CheckpointError(LayerPruneError):
    """A model folder or file that is missing, truncated, corrupt or inconsistent."""


class OutputError(LayerPruneError):
    """An output that may not be written."""


class HubAccessError(LayerPruneError, PermissionError):
    """The token cannot do what was asked (missing, invalid, read-only, not a member, gated repo)."""


class HubError(LayerPruneError):
    """A Hub call that failed (after retries)."""


class StageError(LayerPruneError):
    """A stage's input from an earlier stage, or its own result, fails a consistency check (not the user's input)."""


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def cli_errors(func: F) -> F:
    """Decorate a typer command so that a LayerPruneError becomes `Error: <message>` on stderr and exit 2.

    An OSError that escapes a stage (a full disk, a read-only filesystem, a file that vanished) is an environment
    problem too: it is printed the same way, naming the file, instead of as a traceback.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LayerPruneError as exc:
            if _speaks(exc):  # one line per run: rank 0's, in a multi-process launch
                print(f"Error: {one_line(exc)}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None
        except OSError as exc:
            where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
            print(f"Error: {one_line(describe_os_error(exc))}{where}", file=sys.stderr)
            raise SystemExit(LayerPruneError.exit_code) from None

    return wrapper  # type: ignore[return-value]


def describe_os_error(exc: OSError) -> str:
    """`No space left on device` style text, without the Python exception decoration."""
    text = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        text = "no space left on device"
    elif exc.errno == errno.EROFS:
        text = "read-only file system"
    return text


def _speaks(exc: LayerPruneError) -> bool:
    """Whether this process prints the error: in a multi-process launch only rank 0 does (the launcher's RANK, as
    distributed.world reads it; errors.py imports no other module of the package)."""
    def number(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name) or default)
        except ValueError:  # a malformed launcher variable: the error about it must be printed
            return default

    size, rank = number("WORLD_SIZE", 1), number("RANK", 0)
    return (size <= 1 or rank == 0 or rank >= size) and not getattr(exc, "quiet", False)  # rank >= size: no rank 0
