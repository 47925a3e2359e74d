"""A clock for the HTTP policy's tests: sleeping advances time at once, so nothing waits for real."""

from __future__ import annotations

import asyncio
import time

from evaluator.http_policy import Clock


class FakeClock(Clock):
    def __init__(self, start: float = 1000.0, wall: float | None = None) -> None:
        self.now = start
        # wall time starts at the real time: HTTP dates from a real server are then meaningful
        self.wall_offset = (time.time() if wall is None else wall) - start
        self.sleeps: list[float] = []
        self._due: list[tuple[float, object]] = []

    def at(self, when: float, action) -> None:
        """Call `action()` once fake time has passed `when` seconds from now (e.g. a server coming back)."""
        self._due.append((self.now + when, action))

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.wall_offset

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        for item in [d for d in self._due if d[0] <= self.now]:
            self._due.remove(item)
            item[1]()
        await asyncio.sleep(0)  # still a scheduling point, as a real sleep is
