"""User-facing errors: raised anywhere, printed by the CLI as one line with a non-zero exit code."""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class LayerPruneError(Exception):
    """An error caused by the user's input or environment; its message is one actionable line."""

    exit_code = 2


def cli_errors(func: F) -> F:
    """Decorate a typer command so that a LayerPruneError becomes `Error: <message>` on stderr and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except LayerPruneError as exc:
            message = " ".join(str(exc).split())  # always a single line
            print(f"Error: {message}", file=sys.stderr)
            raise SystemExit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]
