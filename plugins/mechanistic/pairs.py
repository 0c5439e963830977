"""Clean/corrupted prompt pairs: the input of patching, attribution patching and circuits.

A pair is a clean prompt whose next token is `answer` and a corrupted prompt, as similar as
possible, whose next token is `wrong`. The metric everywhere is the logit difference
logit(answer) - logit(wrong) at the clean prompt's last token.

Built-in pair sets:
- `ioi`: indirect-object identification (Wang et al. 2022). Clean "When Mary and John went to
  the store, John gave a drink to" (answer " Mary", wrong " John"); the corruption swaps the
  second mention of the subject for the indirect object ("..., Mary gave a drink to"), which
  makes " John" the right answer. Templates x ordered name pairs, all names one token.
- `factual`: subject swap on the shipped factual prompts (data/factual.jsonl): two facts of
  the same relation whose prompts tokenize to the same length, e.g. "The Eiffel Tower is
  located in the city of" (" Paris") against "The Colosseum is ..." (" Rome").
- a .jsonl file with fields clean, corrupted, answer, wrong and optionally position_map.

Patching runs the corrupted prompt and writes clean activations into it, so the two prompts
must have the same number of tokens. When they do not, a `position_map` (for every corrupted
token, the clean position whose activation it receives) aligns them; without one the pair is
refused before any forward pass.
"""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interpsuite.data import json_lines
from interpsuite.errors import ConfigError

DATA = Path(__file__).parent / "data"
FACTUAL_FILE = DATA / "factual.jsonl"

#: One-token names (with a leading space) in the SmolLM2 / GPT-2 / Llama tokenizers.
IOI_NAMES: tuple[str, ...] = (
    "Mary", "John", "Alice", "Bob", "Sarah", "Tom", "Anna", "James", "Kate", "David",
    "Michael", "Emma", "Daniel", "Lisa", "Paul", "Laura", "Mark", "Susan", "Peter", "Rachel",
)  # fmt: skip
#: {io} is the indirect object (the answer), {s} the subject, mentioned twice.
IOI_TEMPLATES: tuple[str, ...] = (
    "When {io} and {s} went to the store, {s} gave a drink to",
    "When {io} and {s} went to the park, {s} gave a ball to",
    "After {io} and {s} went to the office, {s} handed a letter to",
    "While {io} and {s} were at the party, {s} passed a plate to",
    "When {io} and {s} arrived at the beach, {s} threw a towel to",
    "After {io} and {s} finished dinner, {s} gave a cake to",
    "While {io} and {s} were working at the hospital, {s} sent a message to",
    "Then, {io} and {s} had a long day at school. {s} gave a pencil to",
)
PAIR_SETS = ("ioi", "factual")


@dataclass(frozen=True)
class PromptPair:
    clean: str
    corrupted: str
    answer: str
    wrong: str
    #: for every corrupted token position, the clean position patched into it (None: the same)
    position_map: tuple[int, ...] | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _single_token_names(tokenizer) -> list[str]:
    return [n for n in IOI_NAMES if len(tokenizer(f" {n}", add_special_tokens=False)["input_ids"]) == 1]


def ioi_pairs(n: int = 100, seed: int = 0, tokenizer=None) -> list[PromptPair]:
    """`n` IOI pairs drawn without replacement from templates x ordered name pairs.

    With a tokenizer that splits every name (byte-level tokenizers of tiny test models), the
    prompt ends with the space and the answers are the names' first pieces, chosen distinct:
    the metric then still reads the one token where the two answers part.
    """
    names, spaced = list(IOI_NAMES), True
    if tokenizer is not None:
        single = _single_token_names(tokenizer)
        if len(single) >= 2:
            names = single
        else:
            spaced = False
            # the swap must keep the token count: names of one length, distinct first pieces
            groups: dict[int, dict[str, str]] = {}
            for name in IOI_NAMES:
                length = len(tokenizer(f" {name}", add_special_tokens=False)["input_ids"])
                groups.setdefault(length, {}).setdefault(name[0], name)
            names = list(max(groups.values(), key=len).values())
    combos = [(t, io, s) for t in IOI_TEMPLATES for io, s in itertools.permutations(names, 2)]
    if n > len(combos):
        raise ConfigError(f"ioi: at most {len(combos)} distinct prompts (templates x name pairs); asked for {n}")
    random.Random(seed).shuffle(combos)
    pairs = []
    for template, io, s in combos[:n]:
        clean = template.format(io=io, s=s)
        # the second mention of the subject becomes the indirect object: now " s" is the answer
        head, _, tail = clean.rpartition(f" {s} ")
        corrupted = f"{head} {io} {tail}"
        meta = {"template": IOI_TEMPLATES.index(template), "io": io, "s": s}
        if spaced:
            pairs.append(PromptPair(clean, corrupted, f" {io}", f" {s}", meta=meta))
        else:
            pairs.append(PromptPair(clean + " ", corrupted + " ", io[0], s[0], meta=meta))
    return pairs


def read_facts(path: Path = FACTUAL_FILE) -> list[dict[str, Any]]:
    """Factual prompts: {"prompt", "subject", "answer", "relation"} per line."""
    if not path.exists():
        raise ConfigError(f"factual prompts file {path} is missing; reinstall interpsuite")
    facts = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for number, fact in enumerate(facts, start=1):
        missing = [k for k in ("prompt", "subject", "answer", "relation") if k not in fact]
        if missing:
            raise ConfigError(f"{path}:{number}: missing field(s) {missing}")
    return facts


def factual_pairs(tokenizer, n: int | None = None, seed: int = 0) -> list[PromptPair]:
    """Subject-swap pairs: facts of one relation with equal token counts and different answers."""
    facts = read_facts()
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for fact in facts:
        length = len(tokenizer(fact["prompt"], add_special_tokens=False)["input_ids"])
        by_key.setdefault((fact["relation"], length), []).append(fact)
    pairs = []
    for group in by_key.values():
        for a, b in itertools.permutations(group, 2):
            if a["answer"] != b["answer"]:
                meta = {"relation": a["relation"], "subject": a["subject"], "corrupted_subject": b["subject"]}
                pairs.append(PromptPair(a["prompt"], b["prompt"], a["answer"], b["answer"], meta=meta))
    random.Random(seed).shuffle(pairs)
    if not pairs:
        raise ConfigError("factual: no two facts of one relation tokenize to the same length for this model")
    return pairs if n is None else pairs[:n]


def read_pairs(path: str | Path) -> list[PromptPair]:
    """User pairs from .jsonl: clean, corrupted, answer, wrong[, position_map]."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(f"pairs file {path} not found; give a .jsonl with fields clean, corrupted, answer, wrong")
    if path.suffix != ".jsonl":
        raise ConfigError(f"pairs file {path}: expected .jsonl (one JSON object per line), got {path.suffix!r}")
    pairs = []
    for where, record in json_lines(path.read_text(encoding="utf-8"), str(path)):
        if not isinstance(record, dict):
            raise ConfigError(f"{where}: each line must be a JSON object with fields clean, corrupted, answer, wrong")
        missing = [k for k in ("clean", "corrupted", "answer", "wrong") if not isinstance(record.get(k), str)]
        if missing:
            raise ConfigError(f"{where}: missing or non-string field(s) {missing}")
        position_map = record.get("position_map")
        pairs.append(
            PromptPair(
                record["clean"],
                record["corrupted"],
                record["answer"],
                record["wrong"],
                tuple(int(p) for p in position_map) if position_map is not None else None,
            )
        )
    if not pairs:
        raise ConfigError(f"pairs file {path} has no pairs")
    return pairs


def check_pair_source(pairs: str, what: str) -> None:
    """Weight-free validation of a `pairs` option."""
    if pairs in PAIR_SETS:
        return
    if not pairs.endswith(".jsonl"):
        raise ConfigError(f"{what}: pairs={pairs!r}; choose one of {', '.join(PAIR_SETS)} or a .jsonl path")
    if not Path(pairs).expanduser().exists():
        raise ConfigError(f"{what}: pairs file {pairs} not found")


def load_pairs(source: str, tokenizer, n: int | None = None, seed: int = 0) -> list[PromptPair]:
    """A built-in pair set by name, or a .jsonl file; at most `n` pairs."""
    if source == "ioi":
        return ioi_pairs(100 if n is None else n, seed, tokenizer)
    if source == "factual":
        return factual_pairs(tokenizer, n, seed)
    pairs = read_pairs(source)
    return pairs if n is None else pairs[:n]


@dataclass
class PairBatch:
    """Tokenized pairs, row-aligned.

    `clean_index[b, t]` is the clean position whose activation goes to corrupted position t
    (identity unless a position map was given); `first_diff` is the first corrupted position
    where any row differs from its aligned clean token or is not aligned with itself (every
    activation before it is identical in both runs of a causal model, so patches there are
    no-ops and sweeps may skip those positions).
    """

    pairs: list[PromptPair]
    clean: Any  # TokenBatch
    corrupted: Any  # TokenBatch
    answer_ids: torch.Tensor
    wrong_ids: torch.Tensor
    clean_index: torch.Tensor
    first_diff: int
    allow_first_piece: bool = False

    @property
    def size(self) -> int:
        return len(self.pairs)

    @property
    def mapped(self) -> bool:
        return any(p.position_map is not None for p in self.pairs)

    def subset(self, model, rows: list[int]) -> PairBatch:
        """The pairs of `rows` as their own (re-padded) batch."""
        return tokenize_pairs(model, [self.pairs[r] for r in rows], self.allow_first_piece)

    def align(self, clean_activation: torch.Tensor) -> torch.Tensor:
        """Clean activations [B, T_clean, ...] moved to corrupted positions [B, T_corrupted, ...]."""
        if not self.mapped and clean_activation.shape[1] == self.clean_index.shape[1]:
            return clean_activation
        index = self.clean_index.to(clean_activation.device)
        view = index.view(*index.shape, *([1] * (clean_activation.ndim - 2)))
        return torch.gather(clean_activation, 1, view.expand(*index.shape, *clean_activation.shape[2:]))


def tokenize_pairs(model, pairs: list[PromptPair], allow_first_piece: bool = False, what: str = "pairs") -> PairBatch:
    """Tokenize and validate pairs: one-token answers, equal lengths (or a valid position map)."""
    if not pairs:
        raise ConfigError(f"{what}: no prompt pairs")
    clean = model.tokenize([p.clean for p in pairs])
    corrupted = model.tokenize([p.corrupted for p in pairs])
    clean_len, corrupted_len = clean.lengths.tolist(), corrupted.lengths.tolist()
    width = corrupted.input_ids.shape[1]
    index = torch.arange(width).clamp_max(clean.input_ids.shape[1] - 1).repeat(len(pairs), 1)
    for row, pair in enumerate(pairs):
        if pair.position_map is not None:
            if len(pair.position_map) != corrupted_len[row]:
                raise ConfigError(
                    f"{what}: pair {row}: position_map has {len(pair.position_map)} entries but the corrupted prompt "
                    f"{pair.corrupted!r} has {corrupted_len[row]} tokens; give one clean position per corrupted token"
                )
            bad = [p for p in pair.position_map if not 0 <= p < clean_len[row]]
            if bad:
                raise ConfigError(
                    f"{what}: pair {row}: position_map entries {bad} lie outside the clean prompt "
                    f"({clean_len[row]} tokens)"
                )
            index[row, : corrupted_len[row]] = torch.as_tensor(pair.position_map)
            index[row, corrupted_len[row] :] = clean_len[row] - 1
        elif clean_len[row] != corrupted_len[row]:
            raise ConfigError(
                f"{what}: pair {row}: the clean prompt has {clean_len[row]} tokens {clean.tokens[row]} but the "
                f"corrupted one has {corrupted_len[row]} {corrupted.tokens[row]}; patching needs equal lengths. "
                "Reword one of them, or give a position_map (for each corrupted token, the clean position to patch in)"
            )
    answer_ids = [
        model.token_id(p.answer, f"{what}: pair {row} answer", allow_first_piece)[0] for row, p in enumerate(pairs)
    ]
    wrong_ids = [
        model.token_id(p.wrong, f"{what}: pair {row} wrong", allow_first_piece)[0] for row, p in enumerate(pairs)
    ]
    aligned = torch.gather(clean.input_ids.cpu(), 1, index)
    moved = index != torch.arange(width)
    differs = ((aligned != corrupted.input_ids.cpu()) | moved) & corrupted.attention_mask.cpu().bool()
    first_diff = int(differs.float().argmax(1)[differs.any(1)].min()) if differs.any() else 0
    device = model.device
    return PairBatch(
        pairs,
        clean,
        corrupted,
        torch.tensor(answer_ids, device=device),
        torch.tensor(wrong_ids, device=device),
        index.to(device),
        first_diff,
        allow_first_piece,
    )
