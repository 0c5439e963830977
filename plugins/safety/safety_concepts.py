"""Placeholder: filled in by the safety family work (issue 12)."""

ANALYZERS: list = []
