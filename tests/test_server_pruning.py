"""/api/pruning/* on tiny_llama: every answer equals what the pruning engines give when called directly."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("fastapi")

import transformers  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from interpsuite_plugins.pruning.criteria import importance_scores, prune  # noqa: E402
from interpsuite_plugins.pruning.impact import evaluate_plans  # noqa: E402
from interpsuite_plugins.pruning.weights import analyze_weights  # noqa: E402

from interpsuite.results import to_jsonable  # noqa: E402
from interpsuite.server.app import create_app  # noqa: E402
from interpsuite.server.settings import ServerSettings  # noqa: E402
from interpsuite.testing import cached_model  # noqa: E402

TEXTS = [
    "The cat sat on the mat and looked at the door.",
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "One two three four five six seven.",
    "She opened the window to let the cold air in.",
]
EVAL = ["A dog ran across the field.", "The river flows to the sea in spring."]


@pytest.fixture(scope="module")
def tiny():
    return cached_model("tiny_llama")


@pytest.fixture
def client(tmp_path):
    settings = ServerSettings(
        model="tiny_llama",
        runs_dir=tmp_path / "runs",
        cache_dir=tmp_path / "cache",
        exports_dir=tmp_path / "exports",
        draw_figures=False,
        request_timeout_s=120.0,
    )
    with TestClient(create_app(settings, model=cached_model("tiny_llama"))) as client:
        yield client


def error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"] == code and "\n" not in body["message"], body
    return body["message"]


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def same(a, b) -> bool:
    """JSON values equal, floats to 1e-9 (None is a NaN that JSON cannot carry)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and set(a) == set(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


# --- weight analysis -----------------------------------------------------------------------------------


def test_weight_analysis_rows_equal_the_engine(client, tiny):
    body = ok(client.post("/api/pruning/weight-analysis", json={"layers": [1], "include_spectra": True}))
    expected = analyze_weights(tiny, layers=[1])
    assert same(body["matrices"], to_jsonable(expected.modules.to_dict(orient="records")))
    assert [row["kind"] for row in body["matrices"]] == ["attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate",
                                                         "mlp.up", "mlp.down"]  # fmt: skip
    assert body["summary"]["parameters"] == sum(row["numel"] for row in body["matrices"])
    assert body["summary"]["layers"] == [1] and body["summary"]["matrices"] == 7
    assert len(body["spectra"]) == len(expected.spectra) and "histograms" not in body
    assert all(check["value"] <= check["threshold"] for check in body["checks"].values())


def test_weight_analysis_errors(client):
    post = client.post
    assert "out of range" in error(post("/api/pruning/weight-analysis", json={"layers": [5]}), 400, "config_error")
    assert "attn.x" in error(post("/api/pruning/weight-analysis", json={"kinds": ["attn.x"]}), 400, "config_error")
    assert "colour" in error(post("/api/pruning/weight-analysis", json={"colour": 1}), 422, "validation_error")


# --- neuron importance ---------------------------------------------------------------------------------


def test_neuron_importance_equals_the_engine(client, tiny):
    body = ok(client.post("/api/pruning/neuron-importance", json={"texts": TEXTS, "criterion": "activation",
                                                                   "top": 5}))  # fmt: skip
    scores = importance_scores(tiny, "activation", "neurons", TEXTS, batch_size=8, max_length=128)
    table = scores.table()
    least = table.sort_values(["score", "layer", "unit"], kind="stable").head(5)
    most = table.sort_values(["score", "layer", "unit"], ascending=[False, True, True], kind="stable").head(5)
    assert same(body["least_important"], to_jsonable(least.to_dict(orient="records")))
    assert same(body["most_important"], to_jsonable(most.to_dict(orient="records")))
    assert body["least_important"][0]["score"] <= body["least_important"][-1]["score"]
    assert body["dead_count"] == len(scores.dead()) and body["total"] == 2 * 128 == body["measured"]
    assert body["criterion"] == "activation" and body["granularity"] == "neurons"
    assert body["n_tokens"] == scores.n_tokens


def test_ablation_of_chosen_units_and_head_taylor(client, tiny):
    body = ok(
        client.post(
            "/api/pruning/neuron-importance",
            json={"texts": TEXTS[:2], "criterion": "ablation", "units": {"0": [3, 7]}, "layers": [0]},
        )
    )
    assert body["measured"] == 2 and body["total"] == 128
    scores = importance_scores(tiny, "ablation", "neurons", TEXTS[:2], layers=[0], units={0: [3, 7]})
    assert same(sorted(r["score"] for r in body["least_important"]), sorted(scores.values[0][[3, 7]].tolist()))
    heads = ok(client.post("/api/pruning/neuron-importance",
                           json={"texts": TEXTS, "criterion": "taylor", "granularity": "heads"}))  # fmt: skip
    assert heads["granularity"] == "heads" and heads["total"] == 2 * 4 and heads["dead"] == []


def test_neuron_importance_errors(client, monkeypatch):
    post = client.post
    pair = error(post("/api/pruning/neuron-importance", json={"texts": TEXTS, "criterion": "magnitude"}), 400,
                 "config_error")  # fmt: skip
    assert "valid pairs" in pair
    assert "empty" in error(post("/api/pruning/neuron-importance", json={"texts": []}), 400, "config_error")
    assert "empty" in error(post("/api/pruning/neuron-importance", json={"texts": ["a", " "]}), 400, "config_error")
    units = post("/api/pruning/neuron-importance", json={"texts": TEXTS, "criterion": "taylor", "units": {"0": [1]}})
    assert "ablation" in error(units, 400, "config_error")
    big = post("/api/pruning/neuron-importance", json={"texts": TEXTS, "criterion": "ablation", "units": {"0": [999]}})
    assert "outside" in error(big, 400, "config_error")
    monkeypatch.setattr("interpsuite.server.routes.pruning.MAX_ABLATION_UNITS", 255)  # tiny_llama: 2 x 128 neurons
    many = post("/api/pruning/neuron-importance", json={"texts": TEXTS, "criterion": "ablation"})
    assert "would measure 256 neurons" in error(many, 400, "config_error")
    error(post("/api/pruning/neuron-importance", json={"texts": TEXTS, "granularity": "weights"}), 422,
          "validation_error")  # fmt: skip


# --- candidates -----------------------------------------------------------------------------------------


def test_candidates_plan_matches_prune_and_its_sparsity(client, tiny):
    request = {"texts": TEXTS, "criterion": "activation", "granularity": "neurons", "sparsity": 0.25}
    body = ok(client.post("/api/pruning/candidates", json=request))
    expected = prune(tiny, "activation", 0.25, "neurons", TEXTS)
    assert body["plan"] == to_jsonable(expected.to_json())
    assert body["summary"]["achieved_sparsity"] == 0.25 and body["summary"]["per_layer"] == {"0": 32, "1": 32}
    assert body["plan_id"] and body["model"] == "tiny_llama"
    weights = ok(client.post("/api/pruning/candidates", json={"criterion": "magnitude", "sparsity": 0.5}))
    assert weights["summary"]["achieved_sparsity"] == 0.5 and weights["summary"]["granularity"] == "unstructured"
    assert weights["plan_id"] != body["plan_id"]
    assert len(client.app.state.server.pruning_plans) == 2
    listing = ok(client.get("/api/pruning/plans"))
    assert [p["plan_id"] for p in listing["plans"]] == [weights["plan_id"], body["plan_id"]]
    assert listing["plans"][1]["summary"] == body["summary"] and listing["plans"][1]["model"] == "tiny_llama"


def test_candidates_errors(client):
    post = client.post
    assert "[0, 1)" in error(post("/api/pruning/candidates", json={"sparsity": 1.0}), 400, "config_error")
    assert "[0, 1)" in error(post("/api/pruning/candidates", json={"sparsity": -0.1}), 400, "config_error")
    scope = post("/api/pruning/candidates", json={"texts": TEXTS, "criterion": "activation", "granularity": "neurons",
                                                   "scope": "per_row"})  # fmt: skip
    assert "per_row" in error(scope, 400, "config_error")
    wanda = error(post("/api/pruning/candidates", json={"criterion": "wanda"}), 400, "config_error")
    assert "calibration text" in wanda


# --- impact ---------------------------------------------------------------------------------------------


def test_impact_curve_starts_at_the_baseline_and_plans_can_be_remeasured(client, tiny):
    request = {"texts": EVAL, "calibration": TEXTS, "criterion": "wanda", "sparsities": [0.0, 0.3], "n_boot": 20}
    body = ok(client.post("/api/pruning/impact-analysis", json=request))
    curve = body["curves"]["perplexity"]
    assert [point["sparsity"] for point in curve] == [0.0, 0.3]
    assert curve[0]["value"] == body["baseline"]["perplexity"] and curve[0]["delta"] == 0.0
    assert body["checks"]["sparsity0_matches_baseline"] == {"value": 0.0, "threshold": 0.0, "passed": True}
    assert curve[1]["value"] != body["baseline"]["perplexity"]
    direct = evaluate_plans(tiny, [], EVAL, batch_size=8, max_length=128, n_boot=20)
    assert body["baseline"]["perplexity"] == direct.baseline_value("perplexity")
    assert body["calibration"] == "calibration" and len(body["plan_ids"]) == 2
    again = ok(client.post("/api/pruning/impact-analysis", json={"texts": EVAL, "plan_ids": body["plan_ids"],
                                                                  "n_boot": 20}))  # fmt: skip
    assert [p["value"] for p in again["curves"]["perplexity"]] == [p["value"] for p in curve]
    assert [p["plan_id"] for p in again["curves"]["perplexity"]] == body["plan_ids"]


def test_structured_impact_starts_at_the_baseline_point(client):
    request = {"texts": EVAL, "calibration": TEXTS, "criterion": "activation", "granularity": "neurons",
               "sparsities": [0.5], "n_boot": 0}  # fmt: skip
    body = ok(client.post("/api/pruning/impact-analysis", json=request))
    curve = body["curves"]["perplexity"]
    assert [p["sparsity"] for p in curve] == [0.0, 0.5] and curve[0]["path"] == "baseline"
    assert curve[0]["plan_id"] is None and curve[0]["value"] == body["baseline"]["perplexity"]
    assert curve[1]["path"] == "sweep" and curve[1]["ci_low"] is None  # n_boot 0: no interval
    assert body["checks"]["sweep_matches_masked.neurons"]["passed"] is True


def test_batch_analysis_one_result_per_criterion(client):
    request = {"texts": EVAL, "calibration": TEXTS, "criteria": ["magnitude", "wanda"], "sparsities": [0.4],
               "n_boot": 0}  # fmt: skip
    body = ok(client.post("/api/pruning/batch-analysis", json=request))
    assert set(body["results"]) == {"magnitude", "wanda"}
    magnitude, wanda = body["results"]["magnitude"], body["results"]["wanda"]
    assert magnitude["baseline"] == wanda["baseline"]
    assert {p["criterion"] for p in magnitude["curves"]["perplexity"]} == {"magnitude"}
    assert [p["sparsity"] for p in wanda["curves"]["perplexity"]] == [0.0, 0.4]
    assert len(magnitude["plan_ids"]) == 1 and magnitude["plan_ids"] != wanda["plan_ids"]


def test_impact_without_perplexity_needs_no_texts(client):
    request = {"criterion": "magnitude", "sparsities": [0.2], "tasks": ["ioi"], "n_pairs": 4, "n_boot": 0,
               "allow_first_piece": True}  # fmt: skip
    body = ok(client.post("/api/pruning/impact-analysis", json=request))
    assert set(body["baseline"]) == {"ioi"} and [p["sparsity"] for p in body["curves"]["ioi"]] == [0.0, 0.2]
    no_text = client.post("/api/pruning/impact-analysis", json={"criterion": "magnitude", "sparsities": [0.2]})
    assert "empty" in error(no_text, 400, "config_error")


def test_impact_errors(client):
    post = client.post
    unknown = post("/api/pruning/impact-analysis", json={"texts": EVAL, "plan_ids": ["nope"]})
    assert "nope" in error(unknown, 404, "not_found")
    both = post("/api/pruning/impact-analysis", json={"texts": EVAL, "plan_ids": ["x"], "criterion": "magnitude"})
    assert "not both" in error(both, 400, "config_error")
    empty = post("/api/pruning/impact-analysis", json={"texts": EVAL, "criterion": "magnitude", "sparsities": []})
    assert "sparsities" in error(empty, 400, "config_error")
    tasks = post("/api/pruning/impact-analysis", json={"texts": EVAL, "criterion": "magnitude", "sparsities": [0.1],
                                                        "tasks": ["vibes"]})  # fmt: skip
    assert "vibes" in error(tasks, 400, "config_error")
    twice = post("/api/pruning/batch-analysis", json={"texts": EVAL, "criteria": ["wanda", "wanda"],
                                                       "sparsities": [0.1]})  # fmt: skip
    assert "twice" in error(twice, 400, "config_error")


# --- export ---------------------------------------------------------------------------------------------


def test_export_writes_a_folder_that_reloads(client, tmp_path):
    plan = ok(client.post("/api/pruning/candidates", json={"texts": TEXTS, "criterion": "activation",
                                                            "granularity": "neurons", "sparsity": 0.25}))  # fmt: skip
    body = ok(client.post("/api/pruning/export", json={"plan_id": plan["plan_id"], "name": "tiny-pruned"}))
    assert body["passed"] is True and body["physical"] is True and body["path"] == "tiny-pruned"
    assert body["config_changes"] == {"intermediate_size": 96}
    folder = tmp_path / "exports" / "tiny-pruned"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(folder)
    assert reloaded.config.intermediate_size == 96
    assert sum(p.numel() for p in reloaded.parameters()) == body["parameters_after"] < body["parameters_before"]
    again = client.post("/api/pruning/export", json={"plan_id": plan["plan_id"], "name": "tiny-pruned"})
    assert "overwrite" in error(again, 409, "conflict")
    replaced = client.post("/api/pruning/export", json={"plan_id": plan["plan_id"], "name": "tiny-pruned",
                                                        "overwrite": True})  # fmt: skip
    assert ok(replaced)["passed"] is True
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["tiny-pruned"]  # no work folders left


def test_export_errors(client):
    plan = ok(client.post("/api/pruning/candidates", json={"criterion": "magnitude", "sparsity": 0.1}))
    for name in ("a/b", "..", "../up", "/abs"):
        response = client.post("/api/pruning/export", json={"plan_id": plan["plan_id"], "name": name})
        assert "export name" in error(response, 400, "bad_request"), name
    missing = client.post("/api/pruning/export", json={"plan_id": "nope", "name": "x"})
    assert "candidates" in error(missing, 404, "not_found")


# --- the plan store and cancellation --------------------------------------------------------------------


def test_plan_store_evicts_least_recently_used_by_count_and_bytes(tiny):
    import torch
    from interpsuite_plugins.pruning.plan import PruningPlan

    from interpsuite.server.routes.pruning import PlanStore

    neurons = PruningPlan.for_units(tiny, "neurons", {0: [1]})
    store = PlanStore(max_plans=2, max_bytes=100)
    first, second = store.add(neurons, "tiny_llama"), store.add(neurons, "tiny_llama")
    assert store.get(first, "tiny_llama") is neurons  # first is now the most recent
    third = store.add(neurons, "tiny_llama")
    assert len(store) == 2 and store.get(third, "tiny_llama") is neurons
    with pytest.raises(Exception, match="no pruning plan") as info:
        store.get(second, "tiny_llama")
    assert info.value.status == 404
    with pytest.raises(Exception, match="made on model tiny_llama but the server now serves tiny_gpt2"):
        store.get(first, "tiny_gpt2")
    masks = {"model.layers.0.mlp.down_proj.weight": torch.ones(8, 8, dtype=torch.bool)}  # 64 bytes
    heavy = PruningPlan("unstructured", "magnitude", 0.0, masks=masks)
    kept = store.add(heavy, "tiny_llama")
    store.add(heavy, "tiny_llama")  # 128 bytes > 100: the older heavy plan goes
    with pytest.raises(Exception, match="no pruning plan"):
        store.get(kept, "tiny_llama")


def test_cancellable_progress_stops_between_items():
    from interpsuite.progress import Cancelled, CancelToken
    from interpsuite.server.routes.pruning import cancellable

    token = CancelToken()
    seen = []
    with pytest.raises(Cancelled, match="weights: cancelled"):
        for item in cancellable(token)(range(5), "weights", 5):
            seen.append(item)
            if item == 1:
                token.cancel()
    assert seen == [0, 1]
