"""How batch stages show progress: the :class:`Reporter` protocol (the CLI passes a rich-based one)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Protocol

__all__ = ["QuietReporter", "Reporter"]


class Reporter(Protocol):
    """How stages show progress; the CLI passes a rich-based one, library users may pass none."""

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Any]: ...

    def log(self, message: str) -> None: ...


class QuietReporter:
    """A reporter that shows nothing."""

    class _Task:
        def update(self, done: int, total: int | None = None) -> None:
            pass

    @contextmanager
    def task(self, description: str, total: int | None):
        yield self._Task()

    def log(self, message: str) -> None:
        pass
