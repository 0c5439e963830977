"""SAE benchmark: the live-patch round trip (< 100 ms) and training throughput (>= SAELens).

Part `live` (issue 14's target: < 100 ms):

A patch is what a workbench click does: one `set_feature` on the splice, then `run(top_k=10)`
of the same 32-token prompt, giving the new top-10 next tokens. Timed over `--patches`
patches (random feature, random value, seeded) after a warm-up, side by side in one run:

- `fast`: `model.sae_splice(sae)` (the default: the clean run is cached, each patch recomputes
  only the layers from the spliced one on, and adds the edited features' decoder rows);
- `reference`: the same with `reuse_prefix=False` (every patch a full pass from the tokens,
  the activation encoded and decoded in full);
- `forward`: a plain forward of the prompt with the last logit only, for scale.

The two splice paths must give the same logits (max |difference| reported). The SAE is a
random TopK SAE of width 8 × d_model (its weights do not change the cost).

Part `train` (issue 14's target: tokens/s >= SAELens's trainer): `train_sae` against
SAELens's `SAETrainer` (its lowest-level trainer: it takes any iterator of activation
tensors as its data provider, so no model or dataset is loaded) on the very same tensors.
Activations of `blocks.15.resid_post` over `python_docs_texts()` (max_length 512, real
tokens only, float32) are recorded once in memory and shuffled once (seed 0); the last
`--heldout` rows are held out, the rest cut into 4096-row views that both trainers take in
the identical order (cycling when the run is longer than the data). Same architecture and
hyperparameters: TopK, k=32, width 8 × d_model, batch 4096, Adam (0.9, 0.999), lr 4e-4
constant (our linear decay off), gradient clipping at norm 1, AuxK coefficient 1/32 with
k_aux = d_in / 2, a latent dead after `--dead-window` steps without firing (SAELens counts
steps, we count tokens: window × 4096), no activation normalisation. Differences that
remain are the two designs (see the report's `differences`). The first `--warmup` steps
(our b_dec geometric-median init included) are excluded: the clock starts when a trainer
pulls batch `warmup` from the iterator and stops when it returns. Median of `--repeats`.

Part `record` (recording throughput against a plain forward): the first `--record-texts`
Python-docs texts (max_length 512, batch 8), side by side, median of `--repeats`: a plain
forward keeping only the last logit (what recording runs: no vocabulary projection of every
position), the same forward capturing the hook point, and `record_activations` writing the
activation store (capture, copy to CPU, token index, safetensors shards, fsync).

    python benchmarks/bench_sae.py                  # SmolLM2, blocks.15.resid_post, all parts
    python benchmarks/bench_sae.py --part train     # only the training throughput
    python benchmarks/bench_sae.py --quick          # tiny_llama, 20 patches, random data (writes /tmp)
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import machine_info, write_report  # noqa: E402
from interpsuite_plugins.sae import SAEConfig, SparseAutoencoder  # noqa: E402
from interpsuite_plugins.sae.corpus import python_docs_texts  # noqa: E402
from interpsuite_plugins.sae.training import TrainSettings, explained_variance, train_sae  # noqa: E402

from interpsuite.models import load_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sae.json"
PROMPT_WORDS = (
    "The Eiffel Tower is in Paris, and every year millions of visitors climb its stairs to look out over "
    "the river and the roofs of the city below"
)


def prompt_of_tokens(model, n_tokens: int) -> str:
    words = (PROMPT_WORDS + " ") * 4
    for end in range(len(words), 0, -1):
        text = words[:end].strip()
        if len(model.tokenize([text]).tokens[0]) <= n_tokens:
            return text
    raise ValueError("no prompt short enough")


def summarise(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"median_ms": round(1000 * statistics.median(ordered), 2), "p95_ms": round(1000 * p95, 2)}


def patch_latency(model, sae, prompt: str, patches: int, reuse_prefix: bool, seed: int) -> tuple[dict, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    width = sae.cfg.width
    times, last = [], None
    with model.sae_splice(sae, reuse_prefix=reuse_prefix) as splice:
        splice.run(prompt, top_k=10)  # warm-up: the clean run (cached on the fast path)
        for _ in range(patches):
            feature = int(torch.randint(width, (1,), generator=generator))
            value = float(torch.rand(1, generator=generator) * 10)
            started = time.perf_counter()
            splice.set_feature(feature, value)
            out = splice.run(prompt, top_k=10)
            times.append(time.perf_counter() - started)
            last = out.logits
    return summarise(times), last


BATCH_TOKENS = 4096
LR = 4e-4
AUX_COEFFICIENT = 1 / 32
DIFFERENCES = [
    "decoder: ours keeps unit-norm decoder rows (gradient's radial part removed, rows renormalised after "
    "each step); SAELens's TopK (rescale_acts_by_decoder_norm=True) leaves W_dec free and divides by its "
    "row norms in the forward pass instead",
    "init: ours W_enc = W_dec.T with unit rows and b_dec = geometric median of the first batch (inside the "
    "excluded warm-up); SAELens W_enc = W_dec.T with decoder_init_norm 0.1 and b_dec = 0",
    "dead latents: SAELens counts steps without firing (dead after > window steps), ours counts tokens "
    "(dead after >= window × 4096 tokens): the same latents on fixed 4096-row batches up to one step",
    "bookkeeping: ours log_every = the run length (history once, at the end); SAELens without wandb logs "
    "nothing per step but keeps act_freq_scores and updates a tqdm bar every 100 steps",
]


def record_activations(model, hook: str, max_length: int, batch_size: int = 8) -> torch.Tensor:
    """[n_tokens, d_model] float32 activations of `hook` over the Python-docs corpus, real tokens only.
    The texts go shortest-first so the padded batches waste little compute."""
    texts = sorted(python_docs_texts(), key=len)
    rows = []
    with torch.no_grad():
        for batch in model.batches(texts, batch_size, max_length):
            x = model.forward(batch, capture=[hook], logits_to_keep=1).cache[hook]
            rows.append(x[batch.attention_mask.bool().to(x.device)].float().cpu())
    return torch.cat(rows)


class TimedBatches:
    """The same batch sequence for both trainers; records when batch `warmup` is pulled (the
    clock's start: every step before it is warm-up) so the timing needs no hook in either trainer."""

    def __init__(self, batches: list[torch.Tensor], steps: int, warmup: int):
        self.batches, self.steps, self.warmup = batches, steps, warmup
        self.index, self.started = 0, None

    def __iter__(self) -> TimedBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self.index >= self.steps:
            raise StopIteration
        if self.index == self.warmup:
            self.started = time.perf_counter()
        batch = self.batches[self.index % len(self.batches)]
        self.index += 1
        return batch


def fit_ours(d_in: int, width: int, stream: TimedBatches, dead_window: int) -> tuple[SparseAutoencoder, float]:
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, width=width, architecture="topk", k=32), seed=0)
    settings = TrainSettings(
        lr=LR,
        steps=stream.steps,
        batch_size=BATCH_TOKENS,
        lr_decay=0.0,
        grad_clip=1.0,
        aux_coefficient=AUX_COEFFICIENT,
        dead_tokens_threshold=(dead_window + 1) * BATCH_TOKENS,
        log_every=stream.steps,
    )
    train_sae(sae, stream, settings)
    return sae, time.perf_counter() - stream.started


def fit_saelens(d_in: int, width: int, stream: TimedBatches, dead_window: int):
    import logging

    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    logging.getLogger("sae_lens").setLevel(logging.WARNING)
    torch.manual_seed(0)
    cfg = TopKTrainingSAEConfig(
        d_in=d_in, d_sae=width, k=32, aux_loss_coefficient=AUX_COEFFICIENT, normalize_activations="none"
    )
    sae = TopKTrainingSAE(cfg)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=stream.steps * BATCH_TOKENS,
        train_batch_size_samples=BATCH_TOKENS,
        lr=LR,
        lr_end=LR,
        lr_scheduler_name="constant",
        adam_beta1=0.9,
        adam_beta2=0.999,
        device="cpu",
        dead_feature_window=dead_window,
        feature_sampling_window=10**9,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=stream)
    trainer.fit()
    return sae, time.perf_counter() - stream.started


def heldout_quality(reconstruct, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        x_hat = reconstruct(x)
    return {
        "mse": round(float((x_hat - x).pow(2).sum(-1).mean()), 4),
        "explained_variance": round(explained_variance(x, x_hat), 4),
    }


def training_throughput(args, model, hook: str) -> dict[str, Any]:
    d_model = model.info.d_model
    started = time.perf_counter()
    if args.quick:
        acts = torch.randn(args.random_rows, d_model, generator=torch.Generator().manual_seed(0))
        source = f"random normal, {args.random_rows} rows"
    else:
        acts = record_activations(model, hook, args.max_length)
        source = f"{hook} over python_docs_texts(), max_length {args.max_length}, real tokens"
    record_s = time.perf_counter() - started
    acts = acts[torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(0))].contiguous()
    heldout, pool = acts[-args.heldout :], acts[: -args.heldout]
    batches = list(pool[: pool.shape[0] // BATCH_TOKENS * BATCH_TOKENS].split(BATCH_TOKENS))
    width, total = 8 * d_model, args.warmup + args.train_steps
    timed_tokens = args.train_steps * BATCH_TOKENS
    runs: dict[str, list[float]] = {"interpsuite": [], "saelens": []}
    quality: dict[str, dict[str, float]] = {}
    for repeat in range(args.repeats):
        for name, fit in (("interpsuite", fit_ours), ("saelens", fit_saelens)):
            sae, seconds = fit(d_model, width, TimedBatches(batches, total, args.warmup), args.dead_window)
            runs[name].append(seconds)
            print(f"train {name} repeat {repeat}: {timed_tokens / seconds:,.0f} tokens/s", file=sys.stderr)
            quality[name] = heldout_quality(lambda x, sae=sae: sae(x), heldout)
    tokens_per_s = {name: round(timed_tokens / statistics.median(seconds)) for name, seconds in runs.items()}
    return {
        "activations": {"source": source, "rows": acts.shape[0], "d_in": d_model, "record_s": round(record_s, 1)},
        "sae": {"architecture": "topk", "width": width, "k": 32},
        "settings": {
            "batch_tokens": BATCH_TOKENS,
            "lr": LR,
            "optimizer": "Adam (0.9, 0.999), constant lr, grad clip 1.0",
            "aux_coefficient": AUX_COEFFICIENT,
            "aux_k": d_model // 2,
            "dead_window_steps": args.dead_window,
            "warmup_steps_excluded": args.warmup,
            "timed_steps": args.train_steps,
            "distinct_batches": len(batches),
            "repeats": args.repeats,
            "threads": args.threads,
        },
        "seconds": {name: [round(s, 2) for s in seconds] for name, seconds in runs.items()},
        "tokens_per_s": tokens_per_s,
        "ratio_interpsuite_over_saelens": round(tokens_per_s["interpsuite"] / tokens_per_s["saelens"], 3),
        "heldout": {"rows": heldout.shape[0], **quality},
        "differences": DIFFERENCES,
        "saelens_version": _saelens_version(),
        "target": "interpsuite tokens/s >= SAELens",
    }


def recording_throughput(args, model, hook: str) -> dict[str, Any]:
    import tempfile

    from interpsuite_plugins.sae.workflow import record_activations as record_store

    texts = python_docs_texts()[: args.record_texts]
    batches = list(model.batches(texts, 8, args.max_length))
    tokens = sum(int(batch.attention_mask.sum()) for batch in batches)
    keep = {"logits_to_keep": 1} if model.info.is_causal else {}

    def plain() -> None:
        for batch in batches:
            model.forward(batch, **keep)

    def capture() -> None:
        for batch in batches:
            model.forward(batch, capture=[hook], **keep)

    def record() -> None:
        with tempfile.TemporaryDirectory() as folder:
            store, _ = record_store(
                model, texts, hook, Path(folder) / "store", batch_size=8, max_length=args.max_length
            )
            assert len(store) == tokens

    seconds: dict[str, list[float]] = {"plain_forward": [], "forward_with_capture": [], "record_to_store": []}
    with torch.no_grad():
        plain()  # warm-up
        for repeat in range(args.repeats):
            for name, fn in (("plain_forward", plain), ("forward_with_capture", capture), ("record_to_store", record)):
                started = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - started)
                print(f"record {name} repeat {repeat}: {tokens / seconds[name][-1]:,.0f} tokens/s", file=sys.stderr)
    rate = {name: round(tokens / statistics.median(values)) for name, values in seconds.items()}
    return {
        "hook": hook,
        "texts": len(texts),
        "tokens": tokens,
        "max_length": args.max_length,
        "batch_size": 8,
        "seconds": {name: [round(v, 2) for v in values] for name, values in seconds.items()},
        "tokens_per_s": rate,
        "record_over_plain": round(rate["record_to_store"] / rate["plain_forward"], 3),
    }


def _saelens_version() -> str:
    from importlib.metadata import version

    return version("sae-lens")


def live_patch(args, model, hook: str) -> dict[str, Any]:
    d_model = model.info.d_model
    sae = SparseAutoencoder(SAEConfig(d_in=d_model, width=8 * d_model, architecture="topk", k=32, hook=hook), seed=0)
    prompt = prompt_of_tokens(model, args.tokens)
    n_tokens = len(model.tokenize([prompt]).tokens[0])

    fast, fast_logits = patch_latency(model, sae, prompt, args.patches, True, seed=1)
    reference, reference_logits = patch_latency(model, sae, prompt, args.patches, False, seed=1)
    batch = model.tokenize([prompt])
    forward_times = []
    for _ in range(args.patches):
        started = time.perf_counter()
        model.forward(batch, logits_to_keep=1)
        forward_times.append(time.perf_counter() - started)
    return {
        "hook": hook,
        "prompt_tokens": n_tokens,
        "sae": {"architecture": "topk", "width": sae.cfg.width, "k": 32},
        "patches": args.patches,
        "fast": fast,
        "reference": reference,
        "plain_forward": summarise(forward_times),
        "fast_vs_reference_max_abs_diff": float((fast_logits - reference_logits).abs().max()),
        "target_ms": 100,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--patches", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--part", choices=("live", "train", "record", "all"), default="all")
    parser.add_argument("--record-texts", type=int, default=64, help="Python-docs texts recorded in part record")
    parser.add_argument("--train-steps", type=int, default=100, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="training steps excluded from the timing")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dead-window", type=int, default=25, help="steps without firing before a latent is dead")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--heldout", type=int, default=4096, help="activation rows held out for the sanity check")
    parser.add_argument("--random-rows", type=int, default=6000, help="--quick: random activation rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.model, args.layer, args.patches = "tiny_llama", 1, 20
        args.train_steps, args.repeats, args.heldout = min(args.train_steps, 5), 1, min(args.heldout, 256)
        args.record_texts = min(args.record_texts, 8)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    hook = f"blocks.{args.layer}.resid_post"
    report: dict[str, Any] = {
        "benchmark": "sae",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": args.model,
    }
    # training first: recording its activations (untimed) absorbs a busy machine's tail
    if args.part in ("train", "all"):
        training = training_throughput(args, model, hook)
    if args.part in ("live", "all"):
        report["live_patch"] = live_patch(args, model, hook)
    if args.part in ("train", "all"):
        report["training"] = training
    if args.part in ("record", "all"):
        report["recording"] = recording_throughput(args, model, hook)
    out = args.out or (Path("/tmp/bench_sae_quick.json") if args.quick else RESULTS)
    write_report(report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
