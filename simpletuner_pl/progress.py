"""Progress of long startup work (discovery, caching, quantisation): counts and rates on screen and in the log.

On a terminal a rich bar shows the count, the rate and the time left while the work runs; it appears only once the
work has taken `BAR_AFTER_S`, so quick work draws nothing. The log (Hydra's `<job>.log` beside the run, and the
console where stderr is not a terminal) gets a line every `every_s` seconds and one when the work is done, so a
run's log says what each startup stage did and how fast. While a bar is on screen the periodic lines go to the log
files only (a line written under a live bar would break it). Torch-free: discovery runs in the startup checks.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

BAR_AFTER_S = 0.5
T = TypeVar("T")


def console():
    """The rich console bars are drawn on (stderr); None where stderr is not a terminal (logs, CI, tests)."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console

    return Console(stderr=True)


def _file_handlers(logger: logging.Logger) -> list:
    handlers, current = [], logger
    while current is not None:
        handlers += [h for h in current.handlers if isinstance(h, logging.FileHandler)]
        current = current.parent if current.propagate else None
    return handlers


def log_to_files(logger: logging.Logger, message: str) -> None:
    """`message` at INFO to the log files `logger` reaches (Hydra's `<job>.log`), not to the console."""
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, "%s", (message,), None)
    for handler in _file_handlers(logger):
        if record.levelno >= handler.level:
            handler.handle(record)


def _rate(count: float, seconds: float) -> str:
    per_s = count / seconds if seconds > 0 else float("inf")
    return f"{per_s:,.0f}/s" if per_s >= 10 else f"{per_s:.2g}/s"


class Progress:
    """`with Progress("VAE cache demo", 10000, "latents", log) as p: ... p.advance(n)`."""

    def __init__(self, what: str, total: int, unit: str, logger: logging.Logger, every_s: float = 10.0,
                 where: str = ""):
        self.what, self.total, self.unit, self.log, self.every_s = what, total, unit, logger, every_s
        self.where = f" -> {where}" if where else ""
        self.done, self.bar, self.task, self.screen_checked = 0, None, None, False

    def __enter__(self) -> "Progress":
        self.started = self.last_line = time.perf_counter()
        return self

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.perf_counter()
        if not self.screen_checked and now - self.started >= BAR_AFTER_S and self.done < self.total:
            self._start_bar()
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, rate=_rate(self.done, now - self.started))
        if now - self.last_line >= self.every_s:
            self.last_line = now
            left = (self.total - self.done) * (now - self.started) / max(self.done, 1)
            self._line(f"{self.what}: {self.done}/{self.total} {self.unit} ({_rate(self.done, now - self.started)}, "
                       f"~{left:.0f} s left)", files_only=self.bar is not None)

    def __exit__(self, kind, error, trace) -> None:
        if self.bar is not None:
            self.bar.stop()
        if kind is None and self.done:
            seconds = time.perf_counter() - self.started
            self._line(f"{self.what}: {self.done}/{self.total} {self.unit} in {seconds:.2f} s "
                       f"({_rate(self.done, seconds)}){self.where}")

    def _start_bar(self) -> None:
        self.screen_checked = True
        screen = console()
        if screen is None:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as Bar

        self.bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn(f"{self.unit} {{task.fields[rate]}}"), TimeElapsedColumn(), TimeRemainingColumn(),
                       console=screen, transient=True)
        self.task = self.bar.add_task(self.what, total=self.total, completed=self.done, rate="")
        self.bar.start()

    def _line(self, message: str, files_only: bool = False) -> None:
        if files_only:
            log_to_files(self.log, message)
        else:
            self.log.info("%s", message)


def track(items: Iterable[T], what: str, total: int, unit: str, logger: logging.Logger,
          where: Optional[str] = None) -> Iterator[T]:
    """`items` one by one, counted by a `Progress`."""
    with Progress(what, total, unit, logger, where=where or "") as progress:
        for item in items:
            yield item
            progress.advance()
