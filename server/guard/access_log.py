"""One structured JSON line per request on logger `mera.guard.access` (stderr by default).

Fields: request id, method, route (path only: query strings may carry secrets), status,
duration, request/response body sizes, and the guard's rejection code if it answered itself.
Never the body, never the key.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid

LOGGER_NAME = "mera.guard.access"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def access_logger() -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    if not logger.handlers:  # vLLM configures only its own "vllm" logger tree
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def request_id(client_value: str | None) -> str:
    """The client's id when it is a sane token (it is echoed into logs and headers), else a new one."""
    if client_value and _SAFE_ID.match(client_value):
        return client_value
    return uuid.uuid4().hex


def log_access(logger: logging.Logger, **fields) -> None:
    if logger.isEnabledFor(logging.INFO):
        logger.info(json.dumps({"event": "access", **fields}, separators=(",", ":")))
