"""Typed failures and their JSON rendering (``{"type", "message"}``)."""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    """An error the HTTP API reports to its client as ``status`` + JSON body."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message

    def body(self) -> bytes:
        return json_error(self.type, self.message)


def json_error(type: str, message: str) -> bytes:
    return json.dumps({"type": type, "message": message}).encode("utf-8")


def set_json(request: Any, status: int = 200) -> None:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")


class MetadataUnavailable(Exception):
    """The metadata source (query node / squid / catalog) could not answer."""


class StorageError(Exception):
    """A storage node could not serve a request (connection, status, timeout)."""
