"""A blocking one-shot HTTP GET for scripts and tests that have no reactor
running (the demo test, the benchmark driver)."""

from __future__ import annotations

import urllib.error
import urllib.request


def http_get(url: str, method: str = "GET", timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """``(status, lower-cased headers, body)``; HTTP errors are answers, not
    exceptions; proxies from the environment are ignored (127.0.0.1 only)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, method=method)
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
