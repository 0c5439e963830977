"""Placeholder: filled in by the safety family work (issue 12)."""

from interpsuite.commands import Command

PREDICT_FAILURE = Command("predict-failure", "(in progress)", lambda parser: None, lambda args: 0)
