"""Structured-concurrency helpers: the one cause of a failed task group, and a blocking iterator (a dataset
stream) consumed from the event loop without any thread that can hold the process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

from evaluator.errors import UserError

T = TypeVar("T")


def leaves(error: BaseException) -> list[BaseException]:
    """The non-group exceptions inside (nested) exception groups, in order."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in leaves(inner)]
    return [error]


def primary_cause(group: BaseExceptionGroup) -> BaseException:
    """What a task group failed of: the first user-actionable error, else the first other one. (Siblings
    fail as a consequence — a closed client, a cancelled wait — and would only hide the cause.)"""
    found = [e for e in leaves(group) if not isinstance(e, asyncio.CancelledError)]
    for error in found:
        if isinstance(error, UserError):
            return error
    return found[0] if found else group


async def gather_all(coros) -> list:
    """Run coroutines as one task group: results in order, or the group's primary cause raised as itself
    (the others cancelled)."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in coros]
    except BaseExceptionGroup as eg:
        raise primary_cause(eg) from None
    return [t.result() for t in tasks]


_END = object()


class ThreadFeed(AsyncIterator[T]):
    """Items of a blocking iterator produced by a daemon thread, at most `ahead` items in advance.

    The event loop never blocks on the iterator; a consumer that stops (cancelled, or an error) stops the
    thread at its next item; a thread stuck inside the iterator itself (a stalled hub download) is a
    daemon, so it cannot keep the process alive after the run has ended. Errors raised by the iterator
    are raised to the consumer.
    """

    def __init__(self, make: Callable[[], Iterator[T]], ahead: int = 2) -> None:
        self._make = make
        self._queue: asyncio.Queue = asyncio.Queue()
        self._room = threading.Semaphore(ahead)
        self._stop = threading.Event()
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._produce, name="mera-eval-data", daemon=True)
        self._started = False

    def _put(self, kind: str, value: object) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))
            return True
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False

    def _produce(self) -> None:
        try:
            for item in self._make():
                while not self._room.acquire(timeout=0.2):
                    if self._stop.is_set():
                        return
                if self._stop.is_set() or not self._put("item", item):
                    return
            self._put("end", None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put("error", exc)

    def __aiter__(self) -> ThreadFeed[T]:
        return self

    async def __anext__(self) -> T:
        if not self._started:
            self._started = True
            self._thread.start()
        try:
            kind, value = await self._queue.get()
        except BaseException:
            self.close()
            raise
        if kind == "item":
            self._room.release()
            return value  # type: ignore[return-value]
        self.close()
        if kind == "error":
            raise value  # type: ignore[misc]
        raise StopAsyncIteration

    def close(self) -> None:
        self._stop.set()

    async def __aenter__(self) -> ThreadFeed[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
