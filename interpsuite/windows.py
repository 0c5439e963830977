"""Long documents as overlapping windows on token boundaries (`data.long_documents: window`).

A document longer than the model's context is cut into windows of `length` content tokens that
start every `stride` tokens. Every document token belongs to exactly one window, its *owner*:
the earliest window that contains it, which is the window where it has the most left context
(window k starts at k·stride, so a token has t - k·stride tokens before it there, largest for the
smallest k). Window 0 owns its whole span; each later window owns only the `stride` tokens it
adds at its right end, so every owned token after the first window sees at least
`length - stride` tokens of context. This is the sliding-window evaluation of Hugging Face's
perplexity guide, and it makes per-token outputs independent of how the document was split
as long as each token's owner is fixed.

A window reaches analyzers as a `TokenWindow`: a `str` (its decoded text, for tables and
views) that carries its exact token ids, special tokens included. `HookedModel.tokenize` uses
those ids instead of re-tokenizing the text, so the window is exactly the slice of the
document's tokens (decoding and re-encoding would not round-trip at a window's edges, where a
multi-byte character can be split between two tokens). `TokenBatch.counted_mask` marks the
positions a window owns, which is what analyzers count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError

#: a window needs at least two tokens: one to predict from and one to predict
MIN_WINDOW = 2
#: documents longer than this many characters are tokenized in slices (bounded tokenizer memory)
TOKENIZE_SLICE_CHARS = 1 << 20
#: a slice's last tokens may change when the next characters arrive; they are re-tokenized
SLICE_MARGIN_CHARS = 256


@dataclass(frozen=True)
class WindowSpec:
    """`data.window`: `length` content tokens per window, a new window every `stride` tokens."""

    length: int
    stride: int

    def check(self, max_positions: int | None = None, n_special: int = 0, model: str = "the model") -> None:
        """One ConfigError naming the key and the fix for every impossible window."""
        for key, value in (("length", self.length), ("stride", self.stride)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"data.window.{key}: {value!r} is not a whole number of tokens; e.g. 512")
        if self.stride < 1:
            raise ConfigError(f"data.window.stride={self.stride}: must be at least 1 token; e.g. 256")
        if self.length < MIN_WINDOW:
            raise ConfigError(
                f"data.window.length={self.length}: a window needs at least {MIN_WINDOW} tokens; e.g. 512"
            )
        if self.length < self.stride:
            raise ConfigError(
                f"data.window.length={self.length} is shorter than data.window.stride={self.stride}: tokens between "
                f"windows would be skipped; use a stride of at most the length (e.g. stride = length / 2)"
            )
        if max_positions is not None and self.length + n_special > max_positions:
            raise ConfigError(
                f"data.window.length={self.length} (+{n_special} special tokens) is longer than {model}'s "
                f"{max_positions} positions; use data.window.length={max_positions - n_special} or less"
            )


@dataclass(frozen=True)
class Window:
    """One window of a document, in the document's content-token coordinates (no special tokens)."""

    document: int
    start: int  # first document token in the window
    stop: int  # one past the last
    owned_start: int  # the tokens this window owns: [owned_start, owned_stop)
    owned_stop: int
    prefix: int = 0  # special tokens before the content in the model's input row (a BOS, a CLS)

    @property
    def length(self) -> int:
        return self.stop - self.start

    def document_position(self, position: int) -> int | None:
        """The document token at input-row `position` (None for a special token)."""
        index = position - self.prefix
        return self.start + index if 0 <= index < self.length else None

    def owns(self, position: int) -> bool:
        doc = self.document_position(position)
        return doc is not None and self.owned_start <= doc < self.owned_stop


def plan_windows(n_tokens: int, spec: WindowSpec, document: int = 0, prefix: int = 0) -> list[Window]:
    """The windows of a document of `n_tokens` content tokens; one window when it fits.

    Windows start at 0, stride, 2·stride, ... until one reaches the end (the last one may be
    shorter than `length`); each owns the tokens no earlier window has.
    """
    if n_tokens <= spec.length:
        return [Window(document, 0, n_tokens, 0, n_tokens, prefix)]
    windows: list[Window] = []
    start, covered = 0, 0
    while covered < n_tokens:
        stop = min(start + spec.length, n_tokens)
        windows.append(Window(document, start, stop, covered, stop, prefix))
        covered = stop
        start += spec.stride
    return windows


class TokenWindow(str):
    """A window's decoded text that carries its exact model input ids (special tokens included).

    It is a `str` so that everything that shows or stores texts keeps working; the model
    layer tokenizes it by its ids. String operations return plain strings (without ids), so an
    analyzer that builds new prompts from it gets ordinary text.
    """

    input_ids: tuple[int, ...]
    window: Window

    def __new__(cls, text: str, input_ids: Sequence[int], window: Window) -> TokenWindow:
        obj = super().__new__(cls, text)
        obj.input_ids = tuple(int(i) for i in input_ids)
        obj.window = window
        return obj

    def __reduce__(self):  # picklable for launchers and worker processes
        return (TokenWindow, (str(self), self.input_ids, self.window))


def special_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a text's content (BOS; CLS ... SEP)."""
    probe = "a"
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    full = list(tokenizer(probe)["input_ids"])
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return full[:i], full[i + len(bare) :]
    return [], []


def document_token_ids(tokenizer: Any, text: str) -> list[int]:
    """The document's content token ids, equal to tokenizing it whole without special tokens.

    Long texts are tokenized in slices of TOKENIZE_SLICE_CHARS characters: a slice's tokens are
    kept up to the last one that ends SLICE_MARGIN_CHARS before the slice's end, and the next
    slice starts at the first character not kept, so no token boundary near a cut is trusted.
    """
    if len(text) <= TOKENIZE_SLICE_CHARS or not getattr(tokenizer, "is_fast", False):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    ids: list[int] = []
    start = 0
    while start < len(text):
        end = min(start + TOKENIZE_SLICE_CHARS, len(text))
        encoded = tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True)
        pieces, offsets = encoded["input_ids"], encoded["offset_mapping"]
        if end == len(text):
            ids.extend(pieces)
            break
        limit = (end - start) - SLICE_MARGIN_CHARS
        keep = 0
        while keep < len(pieces) and offsets[keep][1] <= limit:
            keep += 1
        if keep == 0:  # one token spans the whole slice (no boundary found): take the text whole
            return list(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.extend(pieces[:keep])
        start += offsets[keep][0] if keep < len(pieces) else offsets[keep - 1][1]
    return ids


class WindowTexts(Sequence):
    """The windows of every document as a sequence of TokenWindows, made when read.

    Each document is held once, as int32 token ids (4 bytes a token); a window's ids and decoded
    text exist only while an analyzer holds it, so the overlap between windows costs nothing and
    activation memory is set by the window length and the batch size.
    """

    def __init__(self, tokenizer: Any, documents: list[np.ndarray], spec: WindowSpec, frame: tuple[list, list]):
        self._tokenizer, self._documents, self._frame = tokenizer, documents, frame
        self.windows = [
            window
            for document, ids in enumerate(documents)
            for window in plan_windows(len(ids), spec, document, len(frame[0]))
        ]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._make(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._make(index)

    def _make(self, index: int) -> TokenWindow:
        window = self.windows[index]
        content = self._documents[window.document][window.start : window.stop].tolist()
        prefix, suffix = self._frame
        return TokenWindow(self._tokenizer.decode(content), [*prefix, *content, *suffix], window)


@dataclass
class WindowedInputs:
    """What `data.long_documents=window` made of the inputs: windows and their documents."""

    spec: WindowSpec
    windows: list[Window]
    document_tokens: list[int]

    def summary(self) -> dict[str, Any]:
        return {
            "length": self.spec.length,
            "stride": self.spec.stride,
            "documents": len(self.document_tokens),
            "windows": len(self.windows),
            "document_tokens": self.document_tokens,
            "windowed_documents": sum(1 for n in self.document_tokens if n > self.spec.length),
        }


def window_documents(model: Any, texts: Sequence[str], spec: WindowSpec) -> tuple[WindowTexts, WindowedInputs]:
    """Every document as windows (a document that fits is one window: exactly its truncate-mode input)."""
    tokenizer = model.tokenizer
    documents = [np.asarray(document_token_ids(tokenizer, text), dtype=np.int32) for text in texts]
    windows = WindowTexts(tokenizer, documents, spec, special_frame(tokenizer))
    return windows, WindowedInputs(spec, windows.windows, [len(ids) for ids in documents])
