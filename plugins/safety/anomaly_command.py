"""Placeholder: filled in by the safety family work (issue 12)."""

from interpsuite.commands import Command

DETECT_ANOMALY = Command("detect-anomaly", "(in progress)", lambda parser: None, lambda args: 0)
