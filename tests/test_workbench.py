"""The SAE workbench engine (interpsuite_plugins.sae.workbench) on tiny_llama.

Expected values are computed without the workbench: the activation at the hook point is
captured in a plain pass, the patched activation is built by hand and written with a plain
`replace` intervention; feature densities are counted from `sae.encode` of every real token.
"""

from __future__ import annotations

import threading

import pytest
import torch
from interpsuite_plugins.sae.model import SAEConfig, SparseAutoencoder
from interpsuite_plugins.sae.workbench import (
    UnknownFeatureError,
    UnknownPatchError,
    Workbench,
    plain_inference,
)

from interpsuite.errors import ConfigError
from interpsuite.hooks import Intervention
from interpsuite.testing import cached_model

HOOK = "blocks.1.resid_post"
WIDTH = 48
CORPUS = ["The cat sat on the mat.", "Paris is the capital of France.", "Hi there", "One two three four five six."]
PROMPT = "The quick brown fox jumps over"
TOL = 1e-5


def make_sae(d_in: int = 64, hook: str = HOOK, width: int = WIDTH, seed: int = 0) -> SparseAutoencoder:
    sae = SparseAutoencoder(SAEConfig(d_in=d_in, width=width, architecture="relu", hook=hook), seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # biases away from zero: some features fire, some never do
        sae.b_enc.copy_(torch.randn(width, generator=generator) * 0.5 - 0.3)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator) * 0.3)
    return sae.eval()


@pytest.fixture(scope="module")
def model():
    return cached_model("tiny_llama")


@pytest.fixture
def bench(model):
    wb = Workbench(model, make_sae(), "saes/test", corpus=CORPUS, max_corpus_tokens=4096)
    yield wb
    wb.close()


def last_logits(model, text: str, value: torch.Tensor | None = None) -> torch.Tensor:
    batch = model.tokenize([text])
    interventions = [Intervention(HOOK, "replace", value=value)] if value is not None else []
    out = model.forward(batch, interventions=interventions).output
    return out[0, int(batch.last_index[0])]


def captured(model, text: str) -> torch.Tensor:
    return model.forward(model.tokenize([text]), capture=[HOOK]).cache[HOOK]


def test_no_patch_is_the_clean_model_and_add_is_the_steering_vector(model, bench):
    assert (bench.logits(PROMPT) - last_logits(model, PROMPT)).abs().max() < TOL  # the error term is kept
    bench.add_patch(3, "add", 4.0)
    bench.add_patch(7, "add", -2.5)
    x = captured(model, PROMPT)
    w = bench.sae.W_dec.detach()
    expected = last_logits(model, PROMPT, x + 4.0 * w[3] - 2.5 * w[7])
    got = bench.logits(PROMPT)
    assert (got - expected).abs().max() < TOL
    assert torch.allclose(bench.steering_vector(), 4.0 * w[3] - 2.5 * w[7])


def test_set_and_scale_edit_the_features_before_decoding(model, bench):
    sae = bench.sae
    bench.add_patch(5, "set", 3.0)
    bench.add_patch(9, "scale", 0.0)
    x = captured(model, PROMPT)
    with torch.no_grad():
        clean = sae.encode(x)
        edited = clean.clone()
        edited[..., 5] = 3.0
        edited[..., 9] = 0.0
        value = x + (sae.decode(edited) - sae.decode(clean))
    assert (bench.logits(PROMPT) - last_logits(model, PROMPT, value)).abs().max() < TOL
    answer = bench.inference(PROMPT, k=4)
    last = edited[0, -1]
    order = torch.argsort(-last, stable=True)[:20].tolist()
    assert answer["active_features"] == [[f, float(last[f])] for f in order if float(last[f]) != 0.0]
    assert [5, 3.0] in answer["active_features"]
    assert all(f != 9 for f, _ in answer["active_features"])


def test_patch_ids_replace_toggle_update_remove(bench):
    p1 = bench.add_patch(3, "set", 1.0)
    p2 = bench.add_patch(4, "add", 2.0)
    assert (p1.id, p2.id) == ("p1", "p2")
    again = bench.add_patch(3, "scale", 0.5)  # same feature: replaced, same id
    assert (again.id, again.kind, again.value) == ("p1", "scale", 0.5)
    assert [p.id for p in bench.patches()] == ["p1", "p2"]
    assert bench.toggle("p1").enabled is False
    assert bench.toggle("p1").enabled is True
    assert bench.toggle("p1", False).enabled is False
    assert bench.inference(PROMPT, k=2)["patches"] == ["p2"]
    assert bench.splice.edits[3].enabled is False and bench.splice.edits[4].kind == "add"
    assert bench.update("p2", value=-1.0).value == -1.0
    assert bench.splice.edits[4].value == -1.0
    bench.remove("p1")
    assert [p.id for p in bench.patches()] == ["p2"] and 3 not in bench.splice.edits
    assert bench.add_patch(10, "add", 1.0).id == "p3"  # ids are never reused
    with pytest.raises(UnknownPatchError, match="no patch 'p1'"):
        bench.toggle("p1")
    with pytest.raises(UnknownFeatureError, match="width 48"):
        bench.add_patch(48, "add", 1.0)
    with pytest.raises(ConfigError, match="kind 'mul'"):
        bench.add_patch(1, "mul", 1.0)
    with pytest.raises(ConfigError, match="finite"):
        bench.add_patch(1, "add", float("nan"))
    bench.clear()
    assert bench.patches() == [] and not bench.splice.edits


def test_inference_answer_and_plain_inference(model, bench):
    plain = plain_inference(model, PROMPT, k=5)
    answer = bench.inference(PROMPT, k=5)
    assert answer["clean_top"] == plain["top"] == plain["clean_top"]
    assert answer["top"] == answer["clean_top"] and answer["patches"] == []
    probs = torch.softmax(last_logits(model, PROMPT).float(), -1)
    values, ids = probs.topk(5)
    assert [t["id"] for t in plain["top"]] == ids.tolist()
    assert [t["prob"] for t in plain["top"]] == pytest.approx(values.tolist(), abs=1e-6)
    batch = model.tokenize([PROMPT])
    assert len(answer["tokens"]) == int(batch.attention_mask.sum()) and "".join(answer["tokens"]).endswith("over")
    assert answer["latency_ms"] >= 0 and plain["active_features"] == [] and plain["patches"] == []
    bench.add_patch(2, "add", 50.0)
    steered = bench.inference(PROMPT, k=5)
    assert steered["patches"] == ["p1"] and steered["clean_top"] == answer["clean_top"]
    assert steered["top"] != steered["clean_top"]
    with pytest.raises(ConfigError, match="empty"):
        bench.inference("  ")


def test_feature_statistics_are_the_corpus_counts(model, bench):
    sae = bench.sae
    fires = torch.zeros(WIDTH)
    n = 0
    for text in CORPUS:
        acts = sae.encode(captured(model, text)[0]).detach()
        fires += (acts > 0).sum(0)
        n += acts.shape[0]
    density = fires.double() / n
    info = bench.info()
    assert info == {
        "hook": HOOK,
        "width": WIDTH,
        "d_in": 64,
        "architecture": "relu",
        "path": "saes/test",
        "n_features": WIDTH,
        "n_alive": int((fires > 0).sum()),
        "corpus_tokens": n,
    }
    assert 0 < info["n_alive"] < WIDTH  # both kinds present: dead features are listed too
    page = bench.features(0, WIDTH, "density")
    assert page["total"] == WIDTH and len(page["features"]) == WIDTH
    listed = {f["id"]: f["density"] for f in page["features"]}
    assert listed == pytest.approx({f: float(density[f]) for f in range(WIDTH)}, abs=1e-9)
    ds = [f["density"] for f in page["features"]]
    assert ds == sorted(ds, reverse=True)
    assert [f["id"] for f in bench.features(5, 3, "index")["features"]] == [5, 6, 7]
    maxes = [f["max_activation"] for f in bench.features(0, WIDTH, "max")["features"]]
    assert maxes == sorted(maxes, reverse=True)
    alive = next(f for f in page["features"] if f["top_tokens"])
    token = alive["top_tokens"][0]
    found = bench.features(0, WIDTH, "index", q=token.upper())
    assert alive["id"] in [f["id"] for f in found["features"]]
    assert all(any(token.lower() in t.lower() for t in f["top_tokens"]) for f in found["features"])
    assert found["total"] == len(found["features"])
    dead = next(f for f in range(WIDTH) if density[f] == 0)
    details = bench.feature_details(dead)
    assert details["contexts"] == [] and details["density"] == 0 and len(details["logits"]["top"]) == 10
    details = bench.feature_details(alive["id"])
    context = details["contexts"][0]
    assert context["acts"][context["focus"]] == pytest.approx(details["max_activation"], rel=1e-5)
    assert sum(details["histogram"]["counts"]) == round(float(fires[alive["id"]]))
    assert len(details["histogram"]["edges"]) == len(details["histogram"]["counts"]) + 1
    with pytest.raises(UnknownFeatureError, match="width 48"):
        bench.feature_details(-1)
    with pytest.raises(ConfigError, match="sort"):
        bench.features(sort="random")


def test_threads_share_one_workbench(model, bench):
    bench.add_patch(3, "add", 3.0)
    expected = bench.inference(PROMPT, k=3)["top"]
    results, errors = [], []

    def work(i: int) -> None:
        try:
            text = PROMPT if i % 2 == 0 else "Hi there"
            results.append((text, bench.inference(text, k=3)["top"]))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(top == expected for text, top in results if text == PROMPT)


def test_refuses_an_sae_for_another_width(model):
    with pytest.raises(ConfigError, match="d_in is 32"):
        Workbench(model, make_sae(d_in=32), corpus=CORPUS)
