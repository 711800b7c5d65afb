"""Ranking storage nodes by measured response time: pure bookkeeping, no I/O.

Every probe of a storage node (``GET /version``) records either the seconds
it took or a failure. A failure counts as ``failure_penalty`` seconds, so a
node that stops answering sinks in the ranking at once (the original node
simply kept a dead node's last good mean, so a node that died while fastest
stayed ranked first: here that cannot happen).

Ranking, best first, in three tiers:

1. **healthy** -- probed, and the latest probe succeeded: ascending mean of
   the last ``window`` samples (older failures in the window still weigh);
2. **unprobed** -- never probed (or forgotten): we know nothing, so they come
   after every node known to work, but before nodes known to fail;
3. **penalised** -- the latest probe failed: ascending mean as well (a node
   that failed once after nine fast answers ranks before one that failed
   ten times).

Ties are broken by url, so the order is deterministic.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

#: Seconds a failed probe counts as by default: twice the original node's
#: default outbound timeout (5 s). A successful probe never takes longer than
#: the timeout, so a failure always weighs more than any success. Pass
#: ``2 * timeout`` when the timeout is configured differently.
DEFAULT_FAILURE_PENALTY = 10.0

_HEALTHY = 0
_UNPROBED = 1
_PENALISED = 2


class ResponseTimes:
    """The last ``window`` probe results per storage node url."""

    def __init__(self, window: int = 10, failure_penalty: float = DEFAULT_FAILURE_PENALTY) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, not {window!r}")
        if not failure_penalty > 0:
            raise ValueError(f"failure_penalty must be > 0, not {failure_penalty!r}")
        self.window = window
        self.failure_penalty = float(failure_penalty)
        self._samples: dict[str, deque[float]] = {}
        self._last_failed: dict[str, bool] = {}

    def record(self, url: str, seconds: float) -> None:
        """A probe of ``url`` succeeded in ``seconds``."""
        if seconds < 0:
            seconds = 0.0  # a clock step backwards; never rank on a negative time
        self._push(url, float(seconds))
        self._last_failed[url] = False

    def record_failure(self, url: str) -> None:
        """A probe of ``url`` failed or timed out: counts as the penalty."""
        self._push(url, self.failure_penalty)
        self._last_failed[url] = True

    def _push(self, url: str, value: float) -> None:
        samples = self._samples.get(url)
        if samples is None:
            samples = self._samples[url] = deque(maxlen=self.window)
        samples.append(value)

    def mean(self, url: str) -> float | None:
        """Mean of the last ``window`` samples, or None if never probed."""
        samples = self._samples.get(url)
        if not samples:
            return None
        return sum(samples) / len(samples)

    def is_penalised(self, url: str) -> bool:
        """True when the latest probe of ``url`` failed."""
        return self._last_failed.get(url, False)

    def forget(self, url: str) -> None:
        """Drop everything known about ``url`` (idempotent)."""
        self._samples.pop(url, None)
        self._last_failed.pop(url, None)

    def retain_only(self, urls: Iterable[str]) -> None:
        """Forget every url not in ``urls`` (nodes that left the network)."""
        keep = set(urls)
        for url in [u for u in self._samples if u not in keep]:
            self.forget(url)

    def known(self) -> list[str]:
        """Urls with at least one sample."""
        return sorted(self._samples)

    def _key(self, url: str) -> tuple[int, float, str]:
        mean = self.mean(url)
        if mean is None:
            return (_UNPROBED, 0.0, url)
        tier = _PENALISED if self._last_failed.get(url, False) else _HEALTHY
        return (tier, mean, url)

    def rank(self, urls: Iterable[str]) -> list[str]:
        """``urls`` best first (see the module docstring); a permutation of
        the input (duplicates kept)."""
        return sorted(urls, key=self._key)
