"""Representations for the probing family, every chosen layer from ONE forward pass per batch.

Probing 30 layers by running the model 30 times is the classic slow path; here each batch is
run once with every hook captured, and each layer's examples are pooled on the spot so only
[n, d] per layer is kept (never [n, pos, d]).

Three kinds of example, the alignment rules the probing analyzers document:

* texts (`pooling: mean`: mean over a text's real tokens, padding never counts; `last`: the
  last real token, which for a causal model is the only position that has read the whole text);
* tokens (`pooling: tokens`: every real token);
* words (`word_features`): a text is its words joined by single spaces, a word's sub-tokens are
  the tokens whose character span overlaps the word's, and the word's example is the mean of
  those sub-tokens (`alignment: mean`), the first or the last one. Special tokens (span (0, 0))
  belong to no word. A word with no token left after `max_length` truncation is dropped and
  counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from interpsuite.errors import ConfigError
from interpsuite.models import HookedModel

POOLINGS = ("tokens", "mean", "last")
#: one example per text (what sequence-level probes and cross-model comparisons use)
TEXT_POOLINGS = ("mean", "last")
ALIGNMENTS = ("mean", "first", "last")

Progress = Callable[[Iterable, str], Iterable]


def no_progress(iterable: Iterable, desc: str = "") -> Iterable:
    """The `progress` of callers that show none (what `RunContext.progress` stands in for)."""
    return iterable


def check_block_site(info, site: str, what: str) -> str:
    """A per-block site name (`resid_post`, `mlp.out`, ...) this model has, or one line listing them."""
    if site not in info.block_sites():
        listing = ", ".join(info.block_sites())
        raise ConfigError(f"{what}: {info.name} has no per-block site {site!r}; it has: {listing}")
    return site


def hook_names(layers: Sequence[int], hook_point: str) -> list[str]:
    return [f"blocks.{layer}.{hook_point}" for layer in layers]


def _flat(acts: torch.Tensor) -> torch.Tensor:
    """Per-head sites [batch, pos, heads, d_head] become [batch, pos, heads * d_head]."""
    acts = acts.float()
    return acts.flatten(2) if acts.dim() == 4 else acts


def pooled_features(
    model: HookedModel,
    texts: Sequence[str],
    hooks: Sequence[str],
    pooling: str = "mean",
    *,
    batch_size: int = 8,
    max_length: int | None = 128,
    progress: Progress = no_progress,
    desc: str = "capture",
) -> tuple[list[torch.Tensor], list[int]]:
    """([n, d] float32 CPU tensor per hook, the text index of each row) from one pass per batch."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    parts: list[list[torch.Tensor]] = [[] for _ in hooks]
    groups: list[int] = []
    for start in progress(range(0, len(texts), batch_size), desc):
        chunk = list(texts[start : start + batch_size])
        batch = model.tokenize(chunk, max_length)
        cache = model.forward(batch, capture=list(hooks), logits_to_keep=1).cache  # no full-vocab logits
        mask = batch.attention_mask.bool()
        if pooling == "tokens":
            counts = mask.sum(1).tolist()
            groups.extend(start + i for i, count in enumerate(counts) for _ in range(count))
        else:
            groups.extend(range(start, start + len(chunk)))
        for i, hook in enumerate(hooks):
            acts = _flat(cache[hook])
            if pooling == "tokens":
                parts[i].append(acts[mask].cpu())
            elif pooling == "mean":
                weights = mask.unsqueeze(-1).to(acts.dtype)
                parts[i].append(((acts * weights).sum(1) / weights.sum(1)).cpu())
            else:
                parts[i].append(acts[torch.arange(acts.shape[0]), batch.last_index].cpu())
    return [torch.cat(chunks) for chunks in parts], groups


@dataclass
class WordFeatures:
    """Word examples of every hook: features[i] is [n_words_kept, d] for hooks[i]."""

    features: list[torch.Tensor]
    text_ids: list[int]  # the text of each kept word (the probe's split groups)
    word_index: list[int]  # its position among the text's words
    words: list[str]  # the word itself (its type, for control tasks)
    dropped: int  # words that had no token left after truncation


def word_spans(words: Sequence[str]) -> list[tuple[int, int]]:
    """Character spans of the words in " ".join(words)."""
    spans, position = [], 0
    for word in words:
        spans.append((position, position + len(word)))
        position += len(word) + 1
    return spans


def word_token_map(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """For each word, the token positions whose character span overlaps it (may be empty)."""
    tokens: list[list[int]] = [[] for _ in spans]
    for position, (start, end) in enumerate(offsets):
        if end <= start:  # special tokens and empty pieces belong to no word
            continue
        for w, (word_start, word_end) in enumerate(spans):
            if start < word_end and end > word_start:
                tokens[w].append(position)
    return tokens


def word_features(
    model: HookedModel,
    sentences: Sequence[Sequence[str]],
    hooks: Sequence[str],
    alignment: str = "mean",
    *,
    batch_size: int = 8,
    max_length: int | None = 128,
    progress: Progress = no_progress,
    desc: str = "capture words",
) -> WordFeatures:
    """One example per word of each sentence (a list of words), by the module's alignment rule."""
    if alignment not in ALIGNMENTS:
        raise ConfigError(f"token_alignment {alignment!r} is not one of {', '.join(ALIGNMENTS)}")
    parts: list[list[torch.Tensor]] = [[] for _ in hooks]
    text_ids: list[int] = []
    word_index: list[int] = []
    kept_words: list[str] = []
    dropped = 0
    for start in progress(range(0, len(sentences), batch_size), desc):
        chunk = [list(words) for words in sentences[start : start + batch_size]]
        texts = [" ".join(words) for words in chunk]
        batch = model.tokenize(texts, max_length)
        offsets = model.token_offsets(texts, max_length)
        rows: list[int] = []
        positions: list[list[int]] = []
        for row, (words, row_offsets) in enumerate(zip(chunk, offsets, strict=True)):
            for w, token_positions in enumerate(word_token_map(row_offsets, word_spans(words))):
                if not token_positions:
                    dropped += 1
                    continue
                chosen = {"first": token_positions[:1], "last": token_positions[-1:]}.get(alignment, token_positions)
                rows.append(row)
                positions.append(chosen)
                text_ids.append(start + row)
                word_index.append(w)
                kept_words.append(words[w])
        if not rows:
            continue
        cache = model.forward(batch, capture=list(hooks), logits_to_keep=1).cache  # no full-vocab logits
        # a [words, pos] averaging matrix per batch: one matmul pools every word of every row
        width = batch.input_ids.shape[1]
        pool = torch.zeros(len(rows), width)
        for i, chosen in enumerate(positions):
            pool[i, chosen] = 1.0 / len(chosen)
        row_index = torch.tensor(rows)
        for i, hook in enumerate(hooks):
            acts = _flat(cache[hook]).cpu()[row_index]  # [words, pos, d]
            parts[i].append(torch.einsum("wp,wpd->wd", pool, acts))
    features = [torch.cat(chunks) if chunks else torch.zeros(0, 0) for chunks in parts]
    return WordFeatures(features, text_ids, word_index, kept_words, dropped)
