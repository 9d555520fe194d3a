"""A clock tests move by hand: TTLs and leases without sleeping.

    clock = FakeClock()
    mode = StrictMode(0.3, clock=clock)   # anything that takes ``clock=`` (a () -> float)
    clock.advance(0.31)                    # the cached entries have expired

``FakeClock()`` returns seconds like ``time.monotonic``; ``ns()`` the same in
nanoseconds like ``time.time_ns`` (for the metadata service's clock).
"""

from __future__ import annotations


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def ns(self) -> int:
        return int(self.now * 1e9)

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time only moves forward")
        self.now += seconds
        return self.now
