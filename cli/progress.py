"""Rich progress display for the pipeline's :class:`~slidestream.pipeline.Reporter` protocol."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class RichReporter:
    """Nested progress bars on stderr: one for the batch, one for the slide being worked on."""

    def __init__(self, console: Console | None = None, quiet: bool = False):
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self._progress: Progress | None = None
        self._depth = 0

    def _bar(self) -> Progress:
        if self._progress is None:
            self._progress = Progress(
                SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=False, disable=self.quiet,
            )
            self._progress.start()
        return self._progress

    @contextmanager
    def task(self, description: str, total: int | None):
        bar = self._bar()
        tid = bar.add_task(description, total=total, rate="")
        self._depth += 1

        class _Task:
            def update(_self, done: int, total_: int | None = None) -> None:
                task = bar.tasks[[t.id for t in bar.tasks].index(tid)]
                elapsed = task.elapsed or 0.0
                rate = f"{done / elapsed:,.0f}/s" if elapsed > 0.5 and done else ""
                bar.update(tid, completed=done, total=total_ if total_ is not None else task.total, rate=rate)

        try:
            yield _Task()
        finally:
            self._depth -= 1
            if self._depth > 0:
                bar.remove_task(tid)  # keep only the batch-level bars on screen
            if self._depth == 0:
                bar.stop()
                self._progress = None

    def log(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            self.console.print(message)
