"""What an analyzer actually fed the model: distinct texts, their tokens, what truncation cut.

The run header used to count the data group, which says nothing about an analyzer that
brings its own prompts (causal tracing's facts, patching's pairs) and hides truncation.
Every text reaches the model through `HookedModel.tokenize`, so that is where usage is
recorded: while `record_inputs()` is active (the pipeline wraps each analyzer in it),
`tokenize` notes each distinct text with its kept and full token counts. Distinct texts,
because analyzers tokenize the same text several times (a forward, then a backward).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class InputUsage:
    """Distinct texts seen by `tokenize`, each with (tokens kept, tokens before truncation)."""

    lengths: dict[str, tuple[int, int]] = field(default_factory=dict)
    max_length: int | None = None

    def record(self, texts: Sequence[str], kept: Sequence[int], full: Sequence[int], max_length: int | None) -> None:
        for text, n_kept, n_full in zip(texts, kept, full, strict=True):
            self.lengths[text] = (int(n_kept), int(n_full))
        if max_length is not None:
            self.max_length = max_length if self.max_length is None else min(self.max_length, max_length)

    def merge(self, other: InputUsage) -> None:
        self.lengths.update(other.lengths)
        if other.max_length is not None:
            self.max_length = other.max_length if self.max_length is None else min(self.max_length, other.max_length)

    @property
    def count(self) -> int:
        return len(self.lengths)

    def summary(self) -> dict:
        truncated = [full - kept for kept, full in self.lengths.values() if full > kept]
        return {
            "count": self.count,
            "n_tokens": sum(kept for kept, _ in self.lengths.values()),
            "truncated_texts": len(truncated),
            "truncated_tokens": sum(truncated),
            "max_length": self.max_length,
        }


_ACTIVE: ContextVar[InputUsage | None] = ContextVar("interpsuite_input_usage", default=None)


@contextlib.contextmanager
def record_inputs() -> Iterator[InputUsage]:
    """Record every text tokenized in this context (nested recorders each see everything)."""
    usage = InputUsage()
    parent = _ACTIVE.get()
    token = _ACTIVE.set(usage)
    try:
        yield usage
    finally:
        _ACTIVE.reset(token)
        if parent is not None:
            parent.merge(usage)


def active_usage() -> InputUsage | None:
    return _ACTIVE.get()
