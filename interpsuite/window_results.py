"""Combine an analyzer's outputs over the windows of long documents (the `window_outputs` protocol).

The analyzer ran on windows as if each were a text (`text_id` = window index). Here its tables
are mapped back to documents, so a user reads document positions, not window positions:

- "stitch": a per-token table (columns `text_id` (or `text`) and `position`, the position in the model's
  input row) keeps each document token once, from the window that owns it (interpsuite.windows),
  and gains `document` and `document_position`. Special tokens (a BOS every window repeats) are
  not document tokens and are dropped;
- every other table with an integer `text_id` (or `text`) column (per-text rows: one per window) gains `document`
  and `window_start`, and the result's summary lists the windows of each document.

Statistics the analyzer accumulated itself over `TokenBatch.counted_mask` need nothing here:
they already counted each document token once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from .errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .results import Result
    from .windows import WindowedInputs

WINDOW_MODES = ("stitch", "accumulate", "per_window")


def check_windowable(names_and_modes: list[tuple[str, str | None]]) -> None:
    """Refuse, before any weights load, the analyzers that cannot combine outputs across windows."""
    refused = [name for name, mode in names_and_modes if mode not in WINDOW_MODES]
    if refused:
        raise ConfigError(
            f"data.long_documents=window: {', '.join(refused)} cannot combine outputs across the windows of a "
            f"document (docs/scale.md lists those that can); remove {'it' if len(refused) == 1 else 'them'} or use "
            f"data.long_documents=truncate"
        )


#: the columns that name a table row's text (= window) index, in the order they are looked for
TEXT_COLUMNS = ("text_id", "text")


def _text_column(table: pd.DataFrame) -> str | None:
    return next((c for c in TEXT_COLUMNS if c in table.columns), None)


def _window_ids(table: pd.DataFrame, n_windows: int) -> list[int] | None:
    column = _text_column(table)
    if column is None or table.empty:
        return None
    ids = table[column]
    if not pd.api.types.is_integer_dtype(ids) or ids.min() < 0 or ids.max() >= n_windows:
        return None
    return [int(i) for i in ids]


def combine_windows(result: Result, windowed: WindowedInputs, mode: str | None) -> Result:
    """Map `result`'s per-window tables to documents (in place; returned for chaining)."""
    windows = windowed.windows
    for name, table in list(result.tables.items()):
        if not isinstance(table, pd.DataFrame):
            continue
        ids = _window_ids(table, len(windows))
        if ids is None:
            continue
        at = list(table.columns).index(_text_column(table)) + 1
        if mode == "stitch" and "position" in table.columns:
            positions = [int(p) for p in table["position"]]
            owned = [windows[i].owns(p) for i, p in zip(ids, positions, strict=True)]
            kept = table.loc[owned].copy()
            kept_ids = [i for i, keep in zip(ids, owned, strict=True) if keep]
            kept_positions = [p for p, keep in zip(positions, owned, strict=True) if keep]
            kept.insert(at, "document", [windows[i].document for i in kept_ids])
            kept.insert(at + 1, "document_position", [
                windows[i].document_position(p) for i, p in zip(kept_ids, kept_positions, strict=True)
            ])  # fmt: skip
            result.tables[name] = kept.reset_index(drop=True)
        else:
            framed = table.copy()
            framed.insert(at, "document", [windows[i].document for i in ids])
            framed.insert(at + 1, "window_start", [windows[i].start for i in ids])
            result.tables[name] = framed
    result.summary["windows"] = {
        **windowed.summary(),
        "combined_as": mode,
        "per_document": _per_document(windowed),
    }
    return result


def _per_document(windowed: WindowedInputs) -> list[dict[str, int]]:
    counts: dict[int, int] = {}
    for window in windowed.windows:
        counts[window.document] = counts.get(window.document, 0) + 1
    return [
        {"document": doc, "tokens": windowed.document_tokens[doc], "windows": counts.get(doc, 0)}
        for doc in range(len(windowed.document_tokens))
    ]
