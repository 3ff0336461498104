"""What a person (or a CI log, or a dashboard) sees of a long run: stages, bars in each stage's own unit, messages.

Library code reports through the module functions, which do nothing unless a ``Display`` is active::

    with progress.stage("heal"):                          # pipeline.Timer does this for every stage
        bar = progress.task("training", total=200, unit="steps")
        bar.advance(1, loss=1.85)                         # a Trainer callback, a sampling loop, ...

The CLI opens one ``Display`` for the whole command. It renders the same events three ways:

- **live** (a terminal): one rich ``Live`` region with the stage list (done ✓ with its time, current ▶ with its
  elapsed time, pending ·) and the current stage's bars (count, rate, ETA from the measured rate, extra fields
  such as the loss); messages print above it, folded at word boundaries to the terminal's width;
- **plain** (not a terminal: CI, ``| tee``): timestamped lines, no carriage returns; a bar prints at most once every
  ``interval`` seconds (and when it finishes), so a run writes a bounded number of lines per minute;
- **json** (``--log-json FILE``, beside either): one JSON object per line: ``stage_start``, ``stage_end`` (seconds),
  ``progress`` (at most once a second per bar), ``message``, ``warning``, ``summary``.

``quiet`` shows warnings and errors only; ``verbose`` also lets the libraries' own logging through.
Third-party progress bars are routed into the display while it is active: every ``tqdm`` bar (transformers'
weight loading and shard writing, lm-eval's request loop, huggingface_hub's uploads) is created disabled and
mirrored as one of our bars; the Trainer's printed log dicts are removed (healing/training.py adds its own callback).
The json file is a temporary sibling opened at the first stage and renamed onto FILE at the end (outputs.py).

Long module: the three renderings share the event model, and the routing of third-party output (tqdm, loggers,
warnings, transformers' verbosity) must be undone by the same Display that installed it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

_current: contextvars.ContextVar["Display | None"] = contextvars.ContextVar("hf_layerprune_display", default=None)
NOISY_LOGGERS = ("transformers", "huggingface_hub", "datasets", "lm-eval", "lm_eval", "peft", "accelerate", "httpx")


# --- what library code calls --------------------------------------------------------------------------------------


class _NullBar:
    def advance(self, n: float = 1, **fields: Any) -> None:
        pass

    def done(self) -> None:
        pass


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    display = _current.get()
    if display is None:
        yield
        return
    with display.stage(name):
        yield


def task(description: str, total: float | None = None, unit: str = "") -> "Bar | _NullBar":
    display = _current.get()
    return _NullBar() if display is None else display.task(description, total, unit)


def message(text: str) -> None:
    display = _current.get()
    if display is not None:
        display.message(text)


def active() -> bool:
    return _current.get() is not None


# --- the display --------------------------------------------------------------------------------------------------


@dataclass
class Bar:
    display: "Display"
    description: str
    total: float | None
    unit: str
    stage: str | None
    started: float = field(default_factory=time.monotonic)
    completed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    ended: float | None = None
    _printed: float = 0.0  # when the plain renderer last printed this bar
    _logged: float = 0.0  # when the json log last got it

    def advance(self, n: float = 1, **fields: Any) -> None:
        self.completed += n
        self.fields.update(fields)
        self.display._update(self)

    def done(self) -> None:
        if not self.finished:
            self.finished = True
            self.ended = time.monotonic()
            if self.total:  # a loop that counted less than all of its work (e.g. prompt tokens) still finished it
                self.completed = max(self.completed, self.total)
            self.display._update(self, final=True)

    def rate(self) -> float | None:
        elapsed = (self.ended or time.monotonic()) - self.started
        return self.completed / elapsed if elapsed > 0 and self.completed else None

    def eta(self) -> float | None:
        rate = self.rate()
        if rate and self.total:
            return max(0.0, (self.total - self.completed) / rate)
        return None

    def line(self) -> str:
        done = f"{_num(self.completed)}/{_num(self.total)}" if self.total else _num(self.completed)
        parts = [f"{self.description}: {done} {self.unit}".rstrip()]
        if self.total:
            parts[0] += f" ({100 * self.completed / self.total:.0f}%)"
        if self.rate():
            parts.append(f"{_num(self.rate())} {self.unit or 'it'}/s")
        if self.eta() is not None and not self.finished:
            parts.append(f"ETA {duration(self.eta())}")
        parts += [f"{k} {_num(v)}" for k, v in self.fields.items()]
        return ", ".join(parts)


class Display:
    """One command's display (see the module docstring); a context manager that makes itself current."""

    def __init__(self, mode: str = "auto", *, verbose: bool = False, json_path: str | Path | None = None,
                 stream: TextIO | None = None, interval: float = 10.0, width: int | None = None) -> None:
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "live" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        if mode not in ("live", "plain", "quiet"):
            raise ValueError(f"unknown display mode {mode!r}")
        self.mode, self.verbose, self.interval, self.width = mode, verbose, interval, width
        self.json_path = Path(json_path) if json_path else None
        self.json: TextIO | None = None  # a temporary sibling, opened at the first stage (every check passed)
        self._json_tmp: Path | None = None
        self._pending: list[str] = []
        self.stages: dict[str, dict[str, float | None]] = {}
        self.current: list[str] = []
        self.bars: list[Bar] = []
        self.started = time.monotonic()
        self._live = None
        self._console = None
        self._token = None
        self._restore: list[Any] = []

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def __enter__(self) -> "Display":
        from rich.console import Console

        self._console = Console(file=self.stream, highlight=False, width=self.width,
                                force_terminal=self.mode == "live" or None)
        if self.mode == "live":
            from rich.live import Live

            self._live = Live(console=self._console, refresh_per_second=4, transient=False, get_renderable=self._render,
                              redirect_stdout=False, redirect_stderr=False)  # re-rendered on every refresh: times tick
            self._live.__enter__()
        self._token = _current.set(self)
        self._route_third_party()
        return self

    def __exit__(self, *exc: Any) -> None:
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()
        if self._token is not None:
            _current.reset(self._token)
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None
        self._close_json(failed_early=exc[0] is not None and self.json is None)

    def _close_json(self, failed_early: bool) -> None:
        """Rename the log into place; a run refused before its first stage leaves no log at all."""
        if self.json_path is None or failed_early:
            return
        if self.json is None:
            self._open_json()
        self.json.close()
        self.json = None
        os.replace(self._json_tmp, self.json_path)

    # --- events -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if name in self.current:  # re-entered (a route that hands over to another inside the same stage)
            yield
            return
        record = self.stages.setdefault(name, {"seconds": 0.0, "since": None})
        start = record["since"] = time.monotonic()
        self.current.append(name)
        self._event("stage_start", stage=name)
        if self.mode == "plain":
            self._plain(f"{name} …")
        self._refresh()
        try:
            yield
        finally:
            seconds = time.monotonic() - start
            record["seconds"] = (record["seconds"] or 0.0) + seconds
            record["since"] = None
            self.current.remove(name)
            self._event("stage_end", stage=name, seconds=round(seconds, 3))
            if self.mode == "plain":
                self._plain(f"{name} done in {duration(seconds)}")
            self._refresh()

    def task(self, description: str, total: float | None = None, unit: str = "") -> Bar:
        bar = Bar(self, description, total, unit, self.current[-1] if self.current else None)
        self.bars = [b for b in self.bars if not b.finished or b.stage == bar.stage][-6:] + [bar]
        self._event("progress", **self._bar_fields(bar))
        self._refresh()
        return bar

    def message(self, text: str) -> None:
        self._event("message", text=text)
        if self.mode != "quiet":
            self._print(text)

    def warning(self, text: str) -> None:
        self._event("warning", text=text)
        self._print(f"[yellow]Warning:[/yellow] {text}" if self.mode == "live" else f"Warning: {text}")

    def summary(self, renderable: Any, record: dict[str, Any]) -> None:
        """The closing table: printed after the live region's last frame, so it is the last thing on screen."""
        self._event("summary", **record)
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None
        if self.mode != "quiet":
            self._console.print(renderable)

    # --- rendering ----------------------------------------------------------------------------------------------
    def _update(self, bar: Bar, final: bool = False) -> None:
        now = time.monotonic()
        if final or now - bar._logged >= 1.0:
            bar._logged = now
            self._event("progress", **self._bar_fields(bar))
        if self.mode == "plain" and (final or now - max(bar._printed, bar.started) >= self.interval):
            bar._printed = now
            self._plain(bar.line())
        elif self.mode == "live":
            self._refresh()

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        stages = Table.grid(padding=(0, 1))
        now = time.monotonic()
        for name, record in self.stages.items():
            running = record["since"] is not None
            seconds = (record["seconds"] or 0.0) + (now - record["since"] if running else 0.0)
            mark = "[bold cyan]▶[/bold cyan]" if running else "[green]✓[/green]"
            stages.add_row(mark, f"[bold]{name}[/bold]" if running else name, duration(seconds))
        bars = Table.grid(padding=(0, 1))
        recent = [b for b in self.bars if b.finished and b.stage in self.current][-2:]  # what just ended, for context
        for bar in self.bars:
            if bar.finished and bar not in recent:
                continue
            meter = ProgressBar(total=bar.total, completed=bar.completed, width=30) if bar.total else ""
            bars.add_row("  ", meter, bar.line())
        elapsed = f"[dim]elapsed {duration(now - self.started)}[/dim]"
        return Group(stages, bars, elapsed)

    def _print(self, text: str) -> None:
        if self._console is None:
            return
        if self.mode == "plain":
            self._plain(text)
        else:
            self._console.print(text, soft_wrap=False, overflow="fold")

    def _plain(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        width = max(40, (self.width or 120) - 11)
        lines = textwrap.wrap(_strip_markup(text), width=width, break_long_words=False, break_on_hyphens=False) or [""]
        for i, line in enumerate(lines):
            self.stream.write(f"[{stamp}] {line}\n" if i == 0 else f"           {line}\n")
        self.stream.flush()

    def _open_json(self) -> None:
        from hf_layerprune.runtime.outputs import temp_sibling

        self.json_path.parent.mkdir(parents=True, exist_ok=True)  # as --json does
        self._json_tmp = temp_sibling(self.json_path)
        self.json = open(self._json_tmp, "w", encoding="utf-8")
        self.json.writelines(self._pending)
        self._pending.clear()

    def _event(self, kind: str, **fields: Any) -> None:
        if self.json_path is None:
            return
        line = json.dumps({"time": round(time.time(), 3), "event": kind, **fields}, default=str) + "\n"
        if self.json is None and kind == "stage_start":
            self._open_json()
        if self.json is None:
            self._pending.append(line)
        else:
            self.json.write(line)
            self.json.flush()

    @staticmethod
    def _bar_fields(bar: Bar) -> dict[str, Any]:
        return {"stage": bar.stage, "task": bar.description, "completed": bar.completed, "total": bar.total,
                "unit": bar.unit, "finished": bar.finished, **{k: v for k, v in bar.fields.items()}}

    # --- third-party output ---------------------------------------------------------------------------------------
    def _route_third_party(self) -> None:
        """Mirror every tqdm bar as one of ours and quiet the libraries' loggers (unless verbose)."""
        import tqdm.std

        display = self
        original_init, original_update, original_iter, original_close = (
            tqdm.std.tqdm.__init__, tqdm.std.tqdm.update, tqdm.std.tqdm.__iter__, tqdm.std.tqdm.close)

        def init(bar, *args, **kwargs):
            kwargs["disable"] = True
            original_init(bar, *args, **kwargs)
            iterable = args[0] if args else kwargs.get("iterable")
            total = kwargs.get("total")
            if total is None and iterable is not None and hasattr(iterable, "__len__"):
                total = len(iterable)
            desc = kwargs.get("desc") or (args[1] if len(args) > 1 and isinstance(args[1], str) else None)
            # an unnamed bar says nothing a person can use: it is counted in the stage's time, not shown
            bar._layerprune = display.task(str(desc).rstrip(": "), total, kwargs.get("unit") or "") if desc else None

        def update(bar, n=1):
            mirror = getattr(bar, "_layerprune", None)
            if mirror is not None and n:
                mirror.advance(n)
            return original_update(bar, n)

        def iterate(bar):
            mirror = getattr(bar, "_layerprune", None)
            for item in original_iter(bar):
                yield item
                if mirror is not None:
                    mirror.advance(1)

        def close(bar):
            mirror = getattr(bar, "_layerprune", None)
            if mirror is not None:
                mirror.done()
            return original_close(bar)

        tqdm.std.tqdm.__init__, tqdm.std.tqdm.update, tqdm.std.tqdm.__iter__, tqdm.std.tqdm.close = (
            init, update, iterate, close)

        def restore_tqdm():
            tqdm.std.tqdm.__init__, tqdm.std.tqdm.update, tqdm.std.tqdm.__iter__, tqdm.std.tqdm.close = (
                original_init, original_update, original_iter, original_close)

        self._restore.append(restore_tqdm)
        if not self.verbose:
            for name in NOISY_LOGGERS:
                logger = logging.getLogger(name)
                level = logger.level
                logger.setLevel(logging.ERROR)
                self._restore.append(lambda logger=logger, level=level: logger.setLevel(level))
            self._quiet_transformers()
        import warnings

        showwarning = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if self.verbose or not issubclass(category, (DeprecationWarning, FutureWarning, PendingDeprecationWarning)):
                self.warning(f"{category.__name__}: {message}")

        warnings.showwarning = show
        self._restore.append(lambda: setattr(warnings, "showwarning", showwarning))
        handler = _ToDisplay(self)
        ours = logging.getLogger("hf_layerprune")
        ours.addHandler(handler)
        ours.propagate, propagate = False, ours.propagate
        self._restore.append(lambda: (ours.removeHandler(handler), setattr(ours, "propagate", propagate)))


    def _quiet_transformers(self) -> None:
        """transformers at error level while the display runs, without importing it (3 s; an on-disk cut never
        does): if it is imported later, it reads its level from TRANSFORMERS_VERBOSITY, set meanwhile."""
        hf_logging = sys.modules.get("transformers.utils.logging")
        if hf_logging is not None:
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            self._restore.append(lambda: hf_logging.set_verbosity(verbosity))
            return
        previous = os.environ.get("TRANSFORMERS_VERBOSITY")
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"

        def restore() -> None:
            if previous is None:
                os.environ.pop("TRANSFORMERS_VERBOSITY", None)
            else:
                os.environ["TRANSFORMERS_VERBOSITY"] = previous
            later = sys.modules.get("transformers.utils.logging")
            if later is not None:  # imported while the display ran: back to the level it would have had
                later.set_verbosity(getattr(logging, (previous or "warning").upper(), logging.WARNING))

        self._restore.append(restore)


class _ToDisplay(logging.Handler):
    """Our own warnings (Hub retries, ...) shown as display warnings instead of raw log records."""

    def __init__(self, display: Display) -> None:
        super().__init__(logging.INFO)
        self.display = display

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            self.display.warning(text)
        else:
            self.display.message(text)


# --- formatting ---------------------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _num(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _strip_markup(text: str) -> str:
    from rich.text import Text

    try:
        return Text.from_markup(str(text)).plain
    except Exception:  # not valid markup: print it as it is
        return str(text)
