"""TransformerLens (4.x, `TransformerBridge`) cells, written the way its documentation does them:
`run_with_cache` for captures, `run_with_hooks` once per intervention for sweeps.

The bridge is booted offline from the local model object: `boot_transformers(name, hf_model=...)`
reuses the given model and its config, so no hub call is made. TransformerLens forces the eager
attention kernel (its hooks need the pattern), which every cell states.
"""

from __future__ import annotations

import copy

import torch
from peer_workloads import N_THREADS, Builder, Cell, Problem, capture_batch, last_logit_diff, run_threads
from transformer_lens.model_bridge import TransformerBridge


def boot_kwargs(problem: Problem) -> tuple[str, dict]:
    """`boot_transformers(name, **kwargs)` arguments for a fresh eager copy of the model (the
    bridge may change the model it wraps): offline, no hub call. Shared with the SAELens cell,
    whose `SAETransformerBridge.boot_transformers` takes the same arguments."""
    hf = problem.model.hf_model
    config = hf.config.__class__.from_dict(hf.config.to_dict())
    config._attn_implementation = "eager"
    twin = type(hf)(config).eval()
    twin.load_state_dict(hf.state_dict())
    # TransformerLens rebuilds the tokenizer from `init_kwargs["name_or_path"]` unless it already
    # adds BOS; token ids are given directly, so mark the copy as adding BOS and keep it.
    tokenizer = copy.deepcopy(problem.model.tokenizer)
    tokenizer.init_kwargs.setdefault("name_or_path", "local")
    tokenizer.init_kwargs["add_bos_token"] = True
    name = f"local/{problem.model.info.name}"
    return name, {"hf_model": twin.to(problem.device), "tokenizer": tokenizer, "device": str(problem.device)}


def bridge(problem: Problem) -> TransformerBridge:
    """A TransformerBridge booted offline from the local model (see `boot_kwargs`)."""
    if "tlens" not in problem._twins:
        name, kwargs = boot_kwargs(problem)
        problem._twins["tlens"] = TransformerBridge.boot_transformers(name, **kwargs)
    return problem._twins["tlens"]


def _attention() -> str:
    return "eager"


def capture(problem: Problem) -> Cell:
    model, ids = bridge(problem), capture_batch(problem).input_ids

    def run() -> torch.Tensor:
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_resid_post"))
        return torch.stack([cache[f"blocks.{layer}.hook_resid_post"][0] for layer in range(problem.n_layers)])

    return Cell(run, _attention(), "run_with_cache(names_filter=resid_post)")


def _zero_head(head: int, n_heads: int, d_head: int):
    def hook(z: torch.Tensor, hook=None) -> torch.Tensor:
        if z.shape[-1] == n_heads * d_head:  # [batch, pos, heads * d_head]
            z = z.clone()
            z[..., head * d_head : (head + 1) * d_head] = 0
        else:  # [batch, pos, heads, d_head]
            z = z.clone()
            z[:, :, head] = 0
        return z

    return hook


def _sweep_heads(problem: Problem, model: TransformerBridge, indices: list[int]) -> torch.Tensor:
    """`run_with_hooks` once per head at `indices` (of `problem.heads`), the metric of each."""
    n_heads, d_head = problem.model.info.n_heads, problem.model.info.d_head
    values = torch.empty(len(indices))
    with torch.no_grad():
        for i, index in enumerate(indices):
            layer, head = problem.heads[index]
            hooks = [(f"blocks.{layer}.attn.hook_z", _zero_head(head, n_heads, d_head))]
            logits = model.run_with_hooks(problem.clean.input_ids, fwd_hooks=hooks)
            values[i] = last_logit_diff(logits, problem.answers)[0]
    return values


def head_sweep(problem: Problem) -> Cell:
    model, every = bridge(problem), list(range(len(problem.heads)))
    return Cell(lambda: _sweep_heads(problem, model, every), _attention(), "run_with_hooks per head")


def concurrency(problem: Problem) -> Cell:
    """The head sweep's `run_with_hooks` loop on 4 threads sharing the one bridge. Its hooks
    live on the bridge's HookPoints (and `run_with_hooks` resets them all at the end), so each
    thread's passes may see, or lose, the others' hooks."""
    model = bridge(problem)
    return Cell(
        lambda: run_threads(lambda indices: _sweep_heads(problem, model, indices), len(problem.heads)),
        _attention(),
        f"{N_THREADS} threads, one bridge, run_with_hooks per head",
    )


def patching(problem: Problem) -> Cell:
    model = bridge(problem)
    names = [f"blocks.{layer}.hook_resid_pre" for layer in problem.patch_layers]

    def run() -> torch.Tensor:
        values = torch.empty(len(names) * problem.width)
        with torch.no_grad():
            _, clean = model.run_with_cache(problem.clean.input_ids, names_filter=lambda name: name in names)
            i = 0
            for name in names:
                for position in range(problem.width):

                    def write(resid: torch.Tensor, hook=None, name: str = name, position: int = position):
                        resid = resid.clone()
                        resid[:, position] = clean[name][:, position]
                        return resid

                    logits = model.run_with_hooks(problem.corrupted.input_ids, fwd_hooks=[(name, write)])
                    values[i] = last_logit_diff(logits, problem.answers)[0]
                    i += 1
        return values

    return Cell(run, _attention(), "run_with_hooks per (layer, position)")


def attention(problem: Problem) -> Cell:
    model = bridge(problem)

    def run() -> torch.Tensor:
        with torch.no_grad():
            _, cache = model.run_with_cache(
                problem.clean.input_ids, names_filter=lambda name: name.endswith("hook_pattern")
            )
        return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0] for layer in range(problem.n_layers)])

    return Cell(run, _attention(), "run_with_cache(names_filter=pattern)")


BUILDERS: dict[tuple[str, str], Builder] = {
    ("capture", "transformer_lens"): capture,
    ("head_sweep", "transformer_lens"): head_sweep,
    ("patching", "transformer_lens"): patching,
    ("attention", "transformer_lens"): attention,
    ("concurrency", "transformer_lens"): concurrency,
}
