"""Batched greedy decoding with transformers' cached `generate`, under interventions per condition.

One generator for the safety engines: `refusal` decodes every test prompt under every
condition (baseline, ablated, added, random controls) in one call, `failure` labels prompts
by the model's own answer (`conditions=[[]]`). Rows are left-padded, as cached decoding
needs. (`mechanistic.steering.greedy_generate` reruns the whole prefix at every step instead,
because its `apply_at: last` steering addresses positions, which a cache would skip.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from interpsuite.hooks import Intervention
from interpsuite.models import HookedModel, TokenBatch


def _left_padded(model: HookedModel, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor, int]:
    pad = model.tokenizer.pad_token_id
    if pad is None:
        pad = model.tokenizer.eos_token_id if model.tokenizer.eos_token_id is not None else 0
    width = batch.input_ids.shape[1]
    ids = torch.full_like(batch.input_ids, int(pad))
    mask = torch.zeros_like(batch.attention_mask)
    for r, length in enumerate(batch.lengths.tolist()):
        ids[r, width - length :] = batch.input_ids[r, :length]
        mask[r, width - length :] = 1
    return ids, mask, int(pad)


def generate(
    model: HookedModel,
    prompts: Sequence[str],
    conditions: Sequence[Sequence[Intervention]],
    max_new_tokens: int,
    max_length: int | None = None,
    batch_rows: int = 48,
    keep_eos: bool = False,
) -> list[list[list[int]]]:
    """Greedy continuations (token ids, cut at EOS, which is kept with `keep_eos`): result[c][p]
    for condition c and prompt p; `conditions=[[]]` is plain greedy decoding.

    One Hugging Face `generate` call per chunk of prompts covers every condition: row
    c * n + p of the chunk carries condition c's interventions (their `rows`). The key/value
    cache is exact here because every intervention acts on each position alone."""
    from transformers import GenerationConfig

    n_conditions = len(conditions)
    out: list[list[list[int]]] = [[] for _ in conditions]
    per_chunk = max(1, batch_rows // max(1, n_conditions))
    eos = model.tokenizer.eos_token_id
    for start in range(0, len(prompts), per_chunk):
        chunk = list(prompts[start : start + per_chunk])
        n = len(chunk)
        batch = model.tokenize(chunk, max_length)
        ids, mask, pad = _left_padded(model, batch)
        ids, mask = ids.repeat(n_conditions, 1), mask.repeat(n_conditions, 1)
        ivs = [
            dataclasses.replace(iv, rows=list(range(c * n, (c + 1) * n)))
            for c, condition in enumerate(conditions)
            for iv in condition
        ]
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos
        )
        with torch.no_grad(), model.hooks(interventions=ivs):
            tokens = model.hf_model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        new = tokens[:, ids.shape[1] :].tolist()
        for r, row in enumerate(new):
            if eos is not None and eos in row:
                row = row[: row.index(eos) + (1 if keep_eos else 0)]
            out[r // n].append(row)
    return out
