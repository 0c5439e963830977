"""The one check of texts handed to the safety engines (fit, score, the commands' --text)."""

from __future__ import annotations

from collections.abc import Sequence

from interpsuite.errors import ConfigError


def check_texts(texts: Sequence[str] | str, what: str) -> list[str]:
    """Texts as a list; an empty (or whitespace-only) text or a non-string is one ConfigError naming its index."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise ConfigError(f"{what}: no texts given; give at least one non-empty text")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"{what}: text {index} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise ConfigError(f"{what}: text {index} is empty (or only whitespace); remove it or give it content")
    return texts
