"""API-key check for every route but the health probe.

vLLM's own `--api-key` check guards only /v1, /v2, /inference and /cohere; everything else
(/invocations runs inference, /tokenize, /metrics, /docs, scaling routes) is open. The guard
closes all of them. With no key configured, auth is off (a local dev server).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from server.guard.config import GuardSettings

ALWAYS_OPEN = frozenset({"/health"})  # liveness probes of load balancers carry no key


def is_preflight(method: str, headers: Mapping[str, str] | None) -> bool:
    """A CORS preflight: OPTIONS with Origin and Access-Control-Request-Method. Browsers send no
    credentials on it by design, and vLLM's CORS middleware answers it without reaching a route;
    any other OPTIONS request needs the key like every other method."""
    return method == "OPTIONS" and headers is not None and "origin" in headers and (
        "access-control-request-method" in headers
    )


class ApiKeyCheck:
    def __init__(self, api_key: str | None, settings: GuardSettings) -> None:
        # Compare digests so the comparison time does not depend on the key's length either.
        self._key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None
        self._open = set(ALWAYS_OPEN) | ({"/metrics"} if settings.open_metrics else set())

    @property
    def enabled(self) -> bool:
        return self._key_digest is not None

    def is_open(self, path: str, method: str, headers: Mapping[str, str] | None = None) -> bool:
        return is_preflight(method, headers) or path in self._open or path.rstrip("/") in self._open

    def authorized(self, authorization: str | None) -> bool:
        """`Authorization: Bearer <key>`, the only form vLLM's own check (on /v1) accepts too."""
        if self._key_digest is None:
            return True
        scheme, _, presented = (authorization or "").partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            return False
        return hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self._key_digest)
