"""What the server tests check on every response: the error contract (JSON, one line, no traceback)."""

from __future__ import annotations


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
