"""activation_stats equals a direct computation over every real token (padding excluded)."""

from __future__ import annotations

import pandas as pd
import torch

from interpsuite import InterpretabilityPipeline

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hi", "Water boils at one hundred degrees Celsius."]


def test_layer_and_neuron_statistics_equal_direct_computation(tiny_models, tmp_path):
    model = tiny_models["tiny_gpt2"]
    report = InterpretabilityPipeline(
        model=model,
        data=TEXTS,
        analyzers={"activation_stats": {"hook_points": ["mlp.post", "resid_post"]}},
        output_dir=tmp_path,
        sinks=["rundir"],
        batch_size=2,  # several batches with different padding
        progress=False,
    ).run()
    entry = report.payload["analyzers"]["activation_stats"]
    assert all(check["passed"] for check in entry["checks"].values()), entry["checks"]
    neurons = pd.read_csv(tmp_path / entry["tables"]["neuron_stats"])
    layers = pd.read_csv(tmp_path / entry["tables"]["layer_stats"])
    batch = model.tokenize(TEXTS)
    cache = model.forward(batch, capture=["blocks.1.mlp.post", "blocks.0.resid_post"]).cache
    mask = batch.attention_mask.bool()

    acts = cache["blocks.1.mlp.post"][mask].double()  # [real tokens, d_mlp]
    assert acts.shape[0] == sum(len(t) for t in batch.tokens)
    row = neurons[neurons["layer"] == 1].sort_values("unit")
    torch.testing.assert_close(torch.tensor(row["mean"].to_numpy()), acts.mean(0), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(torch.tensor(row["std"].to_numpy()), acts.std(0, unbiased=False), rtol=1e-6, atol=1e-9)
    centred = acts - acts.mean(0)
    kurtosis = (centred**4).mean(0) / (centred**2).mean(0) ** 2 - 3
    torch.testing.assert_close(torch.tensor(row["kurtosis"].to_numpy()), kurtosis, rtol=1e-5, atol=1e-6)
    active = (acts.abs() > 0.01).double().mean(0)
    torch.testing.assert_close(torch.tensor(row["active_frac"].to_numpy()), active)
    torch.testing.assert_close(torch.tensor(row["max_abs"].to_numpy()), acts.abs().max(0).values)

    resid = cache["blocks.0.resid_post"][mask].double()
    stats = layers[(layers["hook_point"] == "resid_post") & (layers["layer"] == 0)].iloc[0]
    assert abs(stats["mean"] - float(resid.mean())) < 1e-9
    assert abs(stats["std"] - float(resid.std(unbiased=False))) < 1e-7
    assert abs(stats["mean_norm"] - float(resid.norm(dim=-1).mean())) < 1e-7
    assert abs(stats["near_zero_frac"] - float((resid.abs() < 0.01).double().mean())) < 1e-12
