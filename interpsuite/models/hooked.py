"""HookedModel: one model, one hook-point vocabulary, captures and batched interventions."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError, HookError
from ..hooks import (
    ActivationCache,
    HookPlan,
    Intervention,
    attach,
    count_hooks,
    hook_layer,
)
from .adapters import adapter_for
from .info import ModelInfo
from .sources import LoadedModel, load_weights


@dataclass
class TokenBatch:
    """Right-padded token ids with their mask and the decoded tokens (for tables/figures)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: list[list[str]]
    text_ids: list[int]

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def lengths(self) -> torch.Tensor:
        return self.attention_mask.sum(dim=1)

    @property
    def last_index(self) -> torch.Tensor:
        """Position of each row's last real token."""
        return self.lengths - 1

    def last_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(`logits_to_keep` positions covering every row's last real token, each row's column in them)."""
        keep, column = torch.unique(self.last_index, sorted=True, return_inverse=True)
        return keep, column

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def repeat(self, k: int) -> TokenBatch:
        """k copies of the batch, copy-major: rows j*B .. (j+1)*B-1 are copy j."""
        return TokenBatch(
            self.input_ids.repeat(k, 1),
            self.attention_mask.repeat(k, 1),
            self.tokens * k,
            self.text_ids * k,
        )

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device), self.attention_mask.to(device), self.tokens, self.text_ids)


@dataclass
class ForwardResult:
    """`output` is logits for causal LMs and the last hidden state for encoders."""

    output: torch.Tensor
    cache: ActivationCache


SweepMetric = Callable[[torch.Tensor, TokenBatch], torch.Tensor]


@dataclass
class PrefixCache:
    """Clean keys and values of the first `length` positions of a batch of `rows` rows.

    In a causal model an intervention at position p cannot change anything at positions
    before p, at any layer; a pass that starts at p attends to these instead of recomputing.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    rows: int

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2])

    def cache(self, copies: int):
        from transformers import DynamicCache

        pairs = zip(self.keys, self.values, strict=True)
        return DynamicCache(ddp_cache_data=[(k.repeat(copies, 1, 1, 1), v.repeat(copies, 1, 1, 1)) for k, v in pairs])

    def truncated(self, length: int) -> PrefixCache:
        return PrefixCache([k[:, :, :length] for k in self.keys], [v[:, :, :length] for v in self.values], self.rows)


class HookedModel:
    """A transformers model seen through the hook-point vocabulary (see DESIGN.md).

    Every method that installs hooks removes them before returning, also after an error:
    `count_hooks(model.hf_model)` is 0 between calls.
    """

    def __init__(self, loaded: LoadedModel, device: str | torch.device = "cpu"):
        self.hf_model = loaded.hf_model.to(device).eval()
        self.tokenizer = loaded.tokenizer
        self.info: ModelInfo = loaded.info
        self.device = torch.device(device)
        self.adapter = adapter_for(self.hf_model.config.model_type)(self.hf_model, self.info)
        self.tokenizer.padding_side = "right"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    # --- inputs ------------------------------------------------------------------------
    def tokenize(
        self, texts: Sequence[str], max_length: int | None = None, text_ids: Sequence[int] | None = None
    ) -> TokenBatch:
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ConfigError("no texts to tokenize: give at least one non-empty text")
        encoded = self.tokenizer(
            list(texts),
            return_tensors="pt",
            padding=True,
            truncation=max_length is not None,
            max_length=max_length,
        )
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
        lengths = mask.sum(dim=1).tolist()
        tokens = [
            [self._readable(t) for t in self.tokenizer.convert_ids_to_tokens(row[:length].tolist())]
            for row, length in zip(ids, lengths, strict=True)
        ]
        ids_list = list(text_ids) if text_ids is not None else list(range(len(texts)))
        return TokenBatch(ids, mask, tokens, ids_list).to(self.device)

    def _readable(self, token: str) -> str:
        text = self.tokenizer.convert_tokens_to_string([token])
        return text if text else token

    def batches(self, texts: Sequence[str], batch_size: int, max_length: int | None = None) -> Iterator[TokenBatch]:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            yield self.tokenize(chunk, max_length, range(start, start + len(chunk)))

    def token_id(self, text: str, what: str = "target", allow_first_piece: bool = False) -> tuple[int, str]:
        """(id, note) of a one-token string such as ' Mary'; empty, unknown and multi-piece strings
        are refused naming the pieces (or, with allow_first_piece, the first piece is used and
        `note` says so)."""
        if not text:
            raise ConfigError(f"{what} is an empty string; give a token such as ' Mary'")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        pieces = self.tokenizer.convert_ids_to_tokens(ids)
        unk = self.tokenizer.unk_token_id
        if not ids or (unk is not None and unk in ids):
            raise ConfigError(f"{what} {text!r} is not in the vocabulary of {self.info.name} (pieces {pieces})")
        if len(ids) > 1:
            if not allow_first_piece:
                raise ConfigError(
                    f"{what} {text!r} is split by the tokenizer into {len(ids)} pieces {pieces}, not one; give a "
                    f"single-token {what} or set allow_first_piece: true to use the first piece {pieces[0]!r}"
                )
            return int(ids[0]), f"{what} {text!r} is {len(ids)} pieces {pieces}: using the first piece {pieces[0]!r}"
        if not 0 <= int(ids[0]) < self.info.vocab_size:
            raise ConfigError(
                f"{what} {text!r} has id {ids[0]} outside the model's vocabulary ({self.info.vocab_size})"
            )
        return int(ids[0]), ""

    def count_tokens(self, texts: Sequence[str], max_length: int | None = None) -> int:
        """Real tokens the texts tokenize to (as `tokenize` would), without building batches."""
        encoded = self.tokenizer(list(texts), truncation=max_length is not None, max_length=max_length)
        return sum(len(ids) for ids in encoded["input_ids"])

    def to_single_token(self, text: str) -> int:
        """The id of a one-token string (e.g. ' Mary'); a clear error otherwise."""
        return self.token_id(text)[0]

    # --- hook points -------------------------------------------------------------------
    @property
    def sites(self):
        return self.adapter.sites

    def hook_names(self) -> list[str]:
        return list(self.adapter.sites)

    @contextlib.contextmanager
    def hooks(
        self,
        capture: Iterable[str] = (),
        interventions: Iterable[Intervention] = (),
        detach: bool = True,
    ) -> Iterator[ActivationCache]:
        """Capture/intervene during the forward passes inside the block (always cleaned up)."""
        plan = HookPlan(tuple(capture), tuple(interventions), detach)
        with attach(self.adapter.sites, plan) as cache:
            yield cache

    def forward(
        self,
        batch: TokenBatch,
        capture: Iterable[str] = (),
        interventions: Iterable[Intervention] = (),
        *,
        grad: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        start_layer: int | None = None,
        start_resid: torch.Tensor | None = None,
        prefix: PrefixCache | None = None,
    ) -> ForwardResult:
        """One forward pass with captures and interventions.

        With `start_layer`/`start_resid` (= the clean `blocks.{L}.resid_pre`), the blocks
        below L are skipped: interventions at L or later cannot change them. With `prefix`
        (causal LMs), positions before `prefix.length` are not recomputed either: their keys
        and values come from the clean run, `start_resid` holds only the later positions, and
        captures, interventions and `logits_to_keep` address positions from `prefix.length` on.
        """
        capture = tuple(capture)
        interventions = tuple(interventions)
        kwargs: dict = {"attention_mask": batch.attention_mask, "use_cache": False}
        if self.info.is_causal:
            kwargs["logits_to_keep"] = logits_to_keep
        skip = (start_layer is not None and start_layer > 0) or prefix is not None
        if skip:
            if start_resid is None:
                raise HookError("start_layer needs start_resid (the clean resid_pre at that layer)")
            start_layer = start_layer or 0
            early = [n for n in (*capture, *(iv.hook for iv in interventions)) if hook_layer(n) < start_layer]
            if early:
                raise HookError(f"hook points {early} lie before start_layer={start_layer}")
            kwargs["inputs_embeds"] = start_resid
            if prefix is not None:
                kwargs["past_key_values"] = prefix.cache(batch.size // prefix.rows)
        else:
            kwargs["input_ids"] = batch.input_ids
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.set_grad_enabled(grad))
            cache = stack.enter_context(self.hooks(capture, interventions, detach=not grad))
            if skip and start_layer > 0:
                stack.enter_context(self.adapter.starting_at(start_layer))
            elif skip:
                stack.enter_context(self.adapter.embeddings_pass_through())
            out = self.hf_model(**kwargs)
        output = out.logits if self.info.is_causal else out.last_hidden_state
        return ForwardResult(output, cache)

    def reference_run(
        self,
        batch: TokenBatch,
        capture: Iterable[str] = (),
        interventions: Iterable[Intervention] = (),
        *,
        keep_prefix: bool = True,
    ) -> tuple[ForwardResult, PrefixCache | None]:
        """A no-grad pass that later passes start from: its captures and, in causal LMs with
        `keep_prefix`, every layer's keys and values (the last logit only is computed)."""
        with_cache = keep_prefix and self.info.is_causal
        with torch.no_grad(), self.hooks(capture=capture, interventions=interventions) as cache:
            out = self.hf_model(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                use_cache=with_cache,
                **({"logits_to_keep": 1} if self.info.is_causal else {}),
            )
        prefix = None
        if with_cache:
            kv = out.past_key_values
            prefix = PrefixCache([layer.keys for layer in kv.layers], [layer.values for layer in kv.layers], batch.size)
        output = out.logits if self.info.is_causal else out.last_hidden_state
        return ForwardResult(output, cache), prefix

    def run_with_cache(self, batch: TokenBatch, names: Iterable[str]) -> ForwardResult:
        return self.forward(batch, capture=names)

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        return self.adapter.unembed(resid)

    # --- batched sweeps ----------------------------------------------------------------
    def sweep(
        self,
        batch: TokenBatch,
        items: Sequence[Sequence[Intervention]],
        metric: SweepMetric,
        *,
        batch_size: int = 32,
        logits_to_keep: int | torch.Tensor = 0,
        reuse_prefix: bool = True,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> torch.Tensor:
        """Run N intervention sets on the same inputs as batched passes: [N, batch.size].

        Item i's interventions apply to its own copy of `batch` inside a pass of up to
        `batch_size` rows; their `rows` refer to rows of `batch`. With `reuse_prefix`, a pass
        starts where its items first touch the model, from the clean run (exact, since nothing
        before that point can change): at the earliest layer (from the clean residual stream),
        and in causal LMs also at the earliest position (attending to the clean keys and
        values of the positions before it). Items are grouped into passes that share a late
        start: by layer, and by (layer block, position block) when positions differ.
        `metric(output, repeated_batch)` sees exactly the `logits_to_keep` positions it asked for.
        """
        n_items, base = len(items), batch.size
        per_pass = max(1, batch_size // base)
        width = batch.input_ids.shape[1]
        first_layer = [min(self._first_layer(ivs), self.info.n_layers - 1) for ivs in items]
        max_position = self._max_start_position(batch, logits_to_keep) if reuse_prefix else 0
        first_position = [min(self._first_position(ivs, width), max_position) for ivs in items]
        chunks = _group_items(first_layer, first_position, per_pass)
        starts = [(min(first_layer[i] for i in c), min(first_position[i] for i in c)) for c in chunks]
        if not reuse_prefix:
            starts = [(0, 0)] * len(chunks)
        clean_resid, prefix = self._clean_prefix(batch, starts)
        results = torch.empty(n_items, base, device=self.device)
        for chunk, (layer, position) in zip(progress(chunks) if progress else chunks, starts, strict=True):
            k = len(chunk)
            repeated = batch.repeat(k)
            interventions = [iv for copy, item in enumerate(chunk) for iv in _rows_of_copy(items[item], copy, base)]
            if layer == 0 and position == 0:
                out = self.forward(repeated, interventions=interventions, logits_to_keep=logits_to_keep).output
            else:
                resid = clean_resid[layer][:, position:].repeat(k, 1, 1)
                out = self.forward(
                    repeated,
                    interventions=[self._shift_positions(iv, position, width) for iv in interventions],
                    logits_to_keep=_shift_keep(logits_to_keep, position),
                    start_layer=layer,
                    start_resid=resid,
                    prefix=prefix.truncated(position) if position > 0 else None,
                ).output
            values = metric(out, repeated)
            results[torch.as_tensor(chunk, device=self.device)] = values.reshape(k, base).to(results.dtype)
        return results

    def _first_layer(self, interventions: Sequence[Intervention]) -> int:
        return min((hook_layer(iv.hook) for iv in interventions), default=self.info.n_layers)

    def _first_position(self, interventions: Sequence[Intervention], width: int) -> int:
        """The earliest position an item can change (0 where it may touch every position)."""
        if not interventions:
            return width  # changes nothing: may start as late as any pass
        if not self.info.is_causal:
            return 0
        first = width
        for iv in interventions:
            site = self.adapter.sites.get(iv.hook)
            if iv.positions is None or site is None or site.pos_axis != 1 or iv.hook.endswith("attn.pattern"):
                return 0
            positions = [p + width if p < 0 else p for p in _index_list(iv.positions)]
            first = min(first, min(positions, default=width))
        return first

    def _max_start_position(self, batch: TokenBatch, logits_to_keep: int | torch.Tensor) -> int:
        """A pass may skip positions only while every row's last token and every kept logit lie after."""
        if not self.info.is_causal:
            return 0
        width = batch.input_ids.shape[1]
        if isinstance(logits_to_keep, torch.Tensor):
            kept = int(logits_to_keep.min()) if logits_to_keep.numel() else 0
        elif logits_to_keep > 0:
            kept = width - logits_to_keep
        else:
            return 0
        return max(0, min(kept, int(batch.last_index.min())))

    def _clean_prefix(self, batch: TokenBatch, starts: list[tuple[int, int]]):
        """Clean resid_pre at every start layer, and clean keys/values where passes skip positions."""
        layers = sorted({layer for layer, position in starts if layer > 0 or position > 0})
        longest = max((position for _, position in starts), default=0)
        if not layers:
            return {}, None
        names = [f"blocks.{layer}.resid_pre" for layer in layers]
        out, prefix = self.reference_run(batch, names, keep_prefix=longest > 0)
        clean_resid = {layer: out.cache[f"blocks.{layer}.resid_pre"] for layer in layers}
        if prefix is not None:
            prefix = prefix.truncated(longest)
        return clean_resid, prefix

    def _shift_positions(self, iv: Intervention, start: int, width: int) -> Intervention:
        """The intervention as seen by a pass that computes positions start.. only."""
        if start == 0:
            return iv
        positions = [p + width if p < 0 else p for p in _index_list(iv.positions)]
        value = iv.value
        if value is not None and value.ndim >= 2 and value.shape[1] == width:
            value = value[:, start:]
        return dataclasses.replace(iv, positions=[p - start for p in positions], value=value)

    def hooks_left(self) -> int:
        return count_hooks(self.hf_model)


def _index_list(index) -> list[int]:
    return torch.as_tensor(index).flatten().tolist()


def _rows_of_copy(interventions: Sequence[Intervention], copy: int, base: int) -> list[Intervention]:
    """An item's interventions moved to its copy of the batch (rows copy*base .. copy*base+base-1)."""
    offset = copy * base
    moved = []
    for iv in interventions:
        rows = range(base) if iv.rows is None else _index_list(iv.rows)
        own = list(range(offset, offset + base))
        mean_over = own if iv.mean_over is None else [offset + r for r in _index_list(iv.mean_over)]
        moved.append(iv.with_rows([offset + r for r in rows], mean_over))
    return moved


def _shift_keep(logits_to_keep: int | torch.Tensor, start: int) -> int | torch.Tensor:
    return logits_to_keep - start if isinstance(logits_to_keep, torch.Tensor) else logits_to_keep


def _group_items(layers: list[int], positions: list[int], per_pass: int) -> list[list[int]]:
    """Passes of up to `per_pass` items whose starts (layer, position) lie close together.

    A pass costs about (layers after its start) x (positions after its start) per row, paid
    for its earliest item; tiles of the (layer, position) plane shaped like the spread of the
    items keep that waste small. With one start position this is simply sorting by layer.
    """
    layer_rank = {value: rank for rank, value in enumerate(sorted(set(layers)))}
    position_rank = {value: rank for rank, value in enumerate(sorted(set(positions)))}
    layer_block = max(1, round(math.sqrt(per_pass * len(layer_rank) / max(1, len(position_rank)))))
    position_block = max(1, per_pass // layer_block)
    tiles: dict[tuple[int, int], list[int]] = {}
    for i in sorted(range(len(layers)), key=lambda i: (layers[i], positions[i])):
        key = (layer_rank[layers[i]] // layer_block, position_rank[positions[i]] // position_block)
        tiles.setdefault(key, []).append(i)
    chunks = []
    for key in sorted(tiles):
        members = tiles[key]
        chunks.extend(members[j : j + per_pass] for j in range(0, len(members), per_pass))
    return chunks


def load_model(
    name: str = "smollm2", *, device: str = "cpu", dtype: str | torch.dtype = "float32", seed: int = 0
) -> HookedModel:
    """Load a model by embedded name, hub name or local path, ready for hooks."""
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return HookedModel(load_weights(name, seed=seed, dtype=torch_dtype), device=device)
