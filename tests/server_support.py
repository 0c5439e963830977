"""What the server and browser tests share: the error contract on every response (JSON, one line,
no traceback), a free loopback port, and Debian's chromium driven by Playwright."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

#: Debian's chromium (`apt-get install chromium`): Playwright's own browser download cannot work here
CHROMIUM = Path("/usr/bin/chromium")


def free_port() -> int:
    """A loopback port nothing listens on (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def browser_or_skip():
    """(playwright.sync_api, the chromium path), or skip the test saying what is missing."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    return sync_api, CHROMIUM


def no_traceback(response) -> None:
    """An httpx response hook: no traceback anywhere; error bodies are `{"error", "message"}`, one line."""
    response.read()
    assert "Traceback" not in response.text
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        assert set(body) >= {"error", "message"}, body
        assert "\n" not in body["message"]


def error(response, status: int, code: str) -> str:
    """Assert the status and the error code; the one-line message, for the test to check."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code, body
    return body["message"]
