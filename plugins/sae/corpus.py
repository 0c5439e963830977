"""Text to train SAEs on without a network: Python's own documentation, and the user's files.

The project's shipped sentences are far too few for an SAE (thousands of tokens; an SAE
wants millions). `pydoc_data.topics` ships with every CPython: 79 reference topics, about
465k characters of real English prose mixed with code. `python_docs_texts` cuts it into
paragraph-sized texts; `text_files` reads the user's own `.txt` files (the main source). The
token count for a model is measured, not estimated: `count_tokens(model, texts)`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from interpsuite.errors import ConfigError

if TYPE_CHECKING:
    from interpsuite.models import HookedModel

#: blank lines separate paragraphs; runs of '*' or '=' underline titles (reStructuredText)
_PARAGRAPHS = re.compile(r"\n\s*\n")
_UNDERLINE = re.compile(r"^[*=~\-^]{3,}$", re.M)


def pack_paragraphs(text: str, max_chars: int) -> list[str]:
    """`text` as consecutive chunks of at most `max_chars` characters, joined from whole
    paragraphs where they fit; a paragraph longer than the limit is cut at it."""
    chunks: list[str] = []
    current = ""
    for paragraph in (p.strip() for p in _PARAGRAPHS.split(text)):
        if not paragraph:
            continue
        if current and len(current) + 2 + len(paragraph) > max_chars:
            chunks.append(current)
            current = ""
        while len(paragraph) > max_chars:
            chunks.append(paragraph[:max_chars])
            paragraph = paragraph[max_chars:]
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        chunks.append(current)
    return chunks


def python_docs_texts(max_chars: int = 2000, min_chars: int = 40) -> list[str]:
    """Python's reference documentation as texts of at most `max_chars` characters.

    Paragraphs are joined in order until the next would pass `max_chars` (a longer paragraph
    is cut at the limit), so each text is a coherent stretch of one topic; title underlines
    are dropped and texts shorter than `min_chars` left out. Deterministic: the same Python
    gives the same texts.
    """
    if max_chars < min_chars or min_chars < 1:
        raise ConfigError(f"python_docs_texts: need 1 <= min_chars <= max_chars, got {min_chars} and {max_chars}")
    from pydoc_data.topics import topics

    texts: list[str] = []
    for name in sorted(topics):
        texts += pack_paragraphs(_UNDERLINE.sub("", topics[name]), max_chars)
    return [text for text in texts if len(text) >= min_chars]


def text_files(paths: Iterable[str | Path], max_chars: int = 2000, encoding: str = "utf-8") -> list[str]:
    """The user's `.txt` files (or folders of them, read in sorted order) as texts of at most
    `max_chars` characters, cut at blank lines where possible."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.txt") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"sae corpus: {path} does not exist; give .txt files or folders of them")
    if not files:
        raise ConfigError("sae corpus: no .txt files found; give .txt files or folders of them")
    texts: list[str] = []
    for file in files:
        try:
            content = file.read_text(encoding=encoding)
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"sae corpus: {file} cannot be read as {encoding} text ({err})") from None
        texts += pack_paragraphs(content, max_chars)
    return texts


def count_tokens(model: HookedModel, texts: Sequence[str], max_length: int | None = None) -> int:
    """How many tokens `model` sees in `texts` (each cut at `max_length` when given)."""
    lengths = model.token_lengths(list(texts))
    return sum(min(n, max_length) if max_length else n for n in lengths)
