"""Nothing lost, no tracebacks, honest exit codes.

Bad input of every kind the validation layer covers gets one `interpsuite: error:` line and
exit code 2 before any weights load or any folder is made; a failed analyzer exits 1 with
every result kept; Ctrl-C exits 130 with the finished analyzers kept and the running one
marked `interrupted`; a failing sink is recorded and never stops the run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from interpsuite import InterpretabilityPipeline, read_results
from interpsuite.__main__ import run_cli, worst
from interpsuite.analyzer import Analyzer
from interpsuite.errors import ConfigError
from interpsuite.hookspecs import hookimpl
from interpsuite.results import Result, contract_errors
from interpsuite.settings import prefer_user_source
from interpsuite.sinks.base import Sink
from tests.plugin_support import make_fake_distribution

BASE = ["model=tiny_llama", "+analyzer=activation_stats", "sinks=[rundir]", "progress=false"]


@pytest.fixture
def bad_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_cell.csv").write_text("text,target\nhello,x\n,y\n")
    (tmp_path / "short_row.csv").write_text("id,text\n1,hello\n2\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    (tmp_path / "blank.jsonl").write_text('{"text": "ok"}\n{"text": ""}\n')
    (tmp_path / "a_file").write_text("not a directory")
    (tmp_path / "one_class.jsonl").write_text("".join(f'{{"text": "t{i}", "label": "x"}}\n' for i in range(9)))
    (tmp_path / "tags.jsonl").write_text('{"words": ["a", "b"], "tags": ["X"]}\n' * 9)
    (tmp_path / "no_de.jsonl").write_text('{"en": "a", "fr": "b", "es": "c"}\n' * 9)
    (tmp_path / "no_answer.jsonl").write_text('{"prompt": "The capital of France is"}\n')
    (tmp_path / "one_request.jsonl").write_text('{"text": "Summarise this page.", "split": "train"}\n')
    return tmp_path


#: (override, what the one line must say). Each is a sample of a class the validation layer
#: covers: types of top-level keys, ranges, choices, unknown keys, files, devices, run dirs.
BAD_INPUTS = [
    ("data.path=empty_cell.csv", r"empty_cell.csv:3: empty 'text' cell; fill it or delete the row"),
    ("data.path=short_row.csv", r"short_row.csv:3: empty 'text' cell"),
    ("data.path=blank.jsonl", r"blank.jsonl:2: field 'text' is '', not a text"),
    ("data.path=latin1.txt", r"not valid utf-8 .*set data.encoding=<the file's encoding>, e.g. data.encoding=latin-1"),
    ("data.path=missing.txt", r"data.path 'missing.txt' does not exist"),
    ("data.max_length=-1", r"data.max_length must be >= 1, got -1"),
    ("data.max_length=0", r"data.max_length must be >= 1, got 0"),
    ("data.max_length=abc", r"data.max_length: expected an integer, got 'abc'"),
    ("data.limit=0", r"data.limit must be >= 1, got 0"),
    ("data.encoding=klingon", r"data.encoding: unknown encoding 'klingon'"),
    ("data.truncation=maybe", r"data.truncation: 'maybe' is not one of warn, error"),
    ("model.dtype=float7", r"dtype='float7' is not a torch dtype; supported dtypes: float32, float16, bfloat16"),
    ("model.dtype=int8", r"dtype='int8' is not a floating-point dtype"),
    ("device=cuda", r"device='cuda' does not exist on this machine \(devices here: cpu"),
    ("device=mps", r"device='mps' does not exist on this machine"),
    ("batch_size=abc", r"batch_size: expected an integer, got 'abc' \(str\); e.g. batch_size=8"),
    ("batch_size=0", r"batch_size must be >= 1, got 0"),
    ("seed=1.5", r"seed: expected an integer, got 1.5"),
    ("progress=maybe", r"progress: expected true or false, got 'maybe'"),
    ("table_format=xlsx", r"table_format: 'xlsx' is not one of csv, parquet"),
    ("figures.formats=[png,gif]", r"figures.formats: 'gif' is not one of png, pdf, svg"),
    ("wandb.mode=sometimes", r"wandb.mode: 'sometimes' is not one of offline, online, disabled"),
    ("sinks=[rundir,nope]", r"unknown sink 'nope'; registered sinks:"),
    ("+foo=1", r"unknown top-level config key 'foo'; known keys:"),
    ("foo=1", r"Could not override 'foo'"),
    ("+experiment=nope", r"Could not find 'experiment/nope'.*quickstart"),
    ("analyzers.activation_stats.layers=[40]", r"activation_stats.layers: layer 40 out of range"),
    ("analyzers.activation_stats.near_zero_threshold=abc", r"analyzers.activation_stats.near_zero_threshold: Value"),
    ("hydra.run.dir=a_file", r"run directory 'a_file' is a file, not a directory"),
    ("hydra.run.dir=a_file/run", r"run directory 'a_file/run' is under 'a_file', which is a file"),
    ("hydra.run.dir=/proc/interpsuite-run", r"run directory '/proc/interpsuite-run' cannot be written"),
    ("+analyzers.linear_probe.tasks=[sentimnet]", r"unknown probing task 'sentimnet'; shipped tasks: sentiment"),
    ("+analyzers.linear_probe.path=one_class.jsonl", r"task 'one_class': probe labels have a single class"),
    (
        "+analyzers.linear_probe={tasks:[],path:one_class.jsonl,label_field:lbl}",
        r"one_class.jsonl:1: no field 'lbl' \(fields: label, text\); set label_field=<field>",
    ),
    (
        "+analyzers.linear_probe={tasks:[],path:tags.jsonl,level:token}",
        r"tags.jsonl:1: 1 tags for 2 words; give exactly one tag per word",
    ),
    ("+analyzers.cross_lingual.path=no_de.jsonl", r"no_de.jsonl:1: no de sentence"),
    ("+analyzers.concept_direction.task=tense", r"the set has 3 classes .*set positive=<label>"),
    ("+analyzers.bias_probe.pairs=[[he]]", r"bias_probe.pairs"),
    ("+analyzers.failure_prediction.tasks=[capitols]", r"unknown task\(s\) \['capitols'\]; shipped tasks with"),
    (
        "+analyzers.failure_prediction={tasks:[],path:no_answer.jsonl}",
        r"no_answer.jsonl:1: no field 'answer', so the answer cannot be checked",
    ),
    ("+analyzers.anomaly_detection.max_normal=4", r"leave 0 to fit after holding out 2 .*give at least 4 texts"),
    ("+analyzers.anomaly_detection.normal_path=blank.jsonl", r"blank.jsonl:2: field 'text' is '', not a text"),
    ("+analyzers.anomaly_detection.normal_path=nope.txt", r"anomaly_detection.normal_path 'nope.txt' does not exist"),
    ("+analyzers.anomaly_detection.ood_sets=[klingon]", r"ood_sets: unknown \['klingon'\]; choose from code"),
    ("+analyzers.anomaly_detection.fpr=1.5", r"fpr: 1.5 must lie strictly between 0 and 1"),
    ("+analyzers.refusal_direction.decline_path=one_request.jsonl", r"has no val/test requests; every split"),
    ("+analyzers.refusal_direction.positions=[0]", r"positions: 0 is not a negative int"),
    ("+analyzers.safety_concepts.concepts=[harm]", r"unknown concept 'harm'; shipped: harmful_intent, toxicity"),
    ("models=[tiny_llama]", r"models: \['tiny_llama'\] compares nothing"),
    ("models=[tiny_llama,tiny_llama]", r"names a model twice"),
    ("models=[tiny_llama,nope]", r"nope"),
]


@pytest.mark.parametrize(("override", "message"), BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_is_one_line_and_exit_code_2_before_anything_is_made(override, message, bad_files, capsys):
    before = sorted(p.name for p in bad_files.iterdir())
    code = run_cli([*BASE, override])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("interpsuite: error: "), captured.err
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert sorted(p.name for p in bad_files.iterdir()) == before  # no outputs/ folder, no .hydra


def test_a_plugin_name_clash_under_python_m_interpsuite_is_one_line(tmp_path):
    site = tmp_path / "site"
    source = """
        from interpsuite import Analyzer, Result, hookimpl

        class Clash(Analyzer):
            name = "activation_stats"

            def run(self, ctx):
                return Result()

        @hookimpl
        def interpsuite_analyzers():
            return [Clash]
    """
    make_fake_distribution(site, "clashing-plugin", "clashing_plugin", source, "clashing")
    proc = _cli([*BASE], tmp_path, site)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("interpsuite: error: two analyzers are named 'activation_stats': one from distribution ")
    assert "'clashing-plugin' (plugin clashing-plugin:clashing)" in line and "'interpsuite' (plugin" in line
    assert line.endswith("Uninstall one, or block one with INTERPSUITE_BLOCK_PLUGINS=<entry point name>.")


# --- exit codes, kept results, interruption: real processes ------------------------------------

TEST_PLUGIN = """
    import time

    from interpsuite import Analyzer, Result, hookimpl


    class Boom(Analyzer):
        name = "test_boom"

        def run(self, ctx):
            raise RuntimeError("boom on purpose")


    class Sleepy(Analyzer):
        name = "test_sleepy"

        def run(self, ctx):
            time.sleep(300)
            return Result()


    @hookimpl
    def interpsuite_analyzers():
        return [Boom, Sleepy]
"""


@pytest.fixture(scope="module")
def test_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("site")
    make_fake_distribution(site, "safety-test-plugin", "safety_test_plugin", TEST_PLUGIN, "safety_test")
    return site


def _cli(args, cwd, site=None, **kwargs):
    env = {**os.environ, "WANDB_SILENT": "true"}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "interpsuite", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_a_failed_analyzer_exits_1_and_keeps_every_result(tmp_path, test_site):
    run_dir = tmp_path / "run"
    proc = _cli([*BASE, "+analyzers.test_boom={}", f"hydra.run.dir={run_dir}"], tmp_path, test_site)
    assert proc.returncode == 1, proc.stderr
    payload = read_results(run_dir)
    assert payload["status"] == "complete"
    assert payload["analyzers"]["activation_stats"]["status"] == "ok"
    assert payload["analyzers"]["test_boom"] == {**payload["analyzers"]["test_boom"], "status": "failed"}
    assert payload["analyzers"]["test_boom"]["error"] == "RuntimeError: boom on purpose"
    assert "boom on purpose" in (run_dir / "logs" / "test_boom.traceback.txt").read_text()
    assert "Traceback" not in proc.stderr
    assert contract_errors(payload, run_dir) == []
    assert (run_dir / "interpsuite.log").is_file()  # Hydra's log is named after us, not __main__


def test_multirun_reports_each_job_and_exits_with_the_worst_code(tmp_path, test_site):
    proc = _cli(["-m", *BASE, "batch_size=4,abc", f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, test_site)
    assert proc.returncode == 2, proc.stderr
    assert re.search(r"^job 0 \(.*batch_size=4.*\): exit code 0$", proc.stdout, flags=re.M), proc.stdout
    assert re.search(r"^job 1 \(.*batch_size=abc.*\): exit code 2$", proc.stdout, flags=re.M), proc.stdout
    assert "interpsuite: error: batch_size: expected an integer, got 'abc'" in proc.stderr
    (job0,) = (tmp_path / "sweep").glob("0_*")
    assert read_results(job0)["analyzers"]["activation_stats"]["status"] == "ok"
    assert not list((tmp_path / "sweep").glob("1_*/results.json"))  # the bad job never ran


def test_ctrl_c_exits_130_and_keeps_what_finished(tmp_path, test_site):
    run_dir = tmp_path / "run"
    path = f"{test_site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    env = {**os.environ, "WANDB_SILENT": "true", "PYTHONPATH": path}
    proc = subprocess.Popen(
        [sys.executable, "-m", "interpsuite", *BASE, "+analyzers.test_sleepy={}", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell's background job starts with SIGINT ignored, and a child inherits that: reset it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # wait until the first analyzer is on disk
            results = run_dir / "results.json"
            if results.is_file() and "activation_stats" in json.loads(results.read_text())["analyzers"]:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # inside test_sleepy now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # never leave a sleeping run behind
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    payload = read_results(run_dir)
    assert payload["status"] == "interrupted"
    assert payload["analyzers"]["activation_stats"]["status"] == "ok"
    assert payload["analyzers"]["test_sleepy"]["status"] == "interrupted"
    assert "Traceback" not in err
    assert contract_errors(payload, run_dir) == []


def test_worst_exit_code_order():
    assert worst([]) == 0 and worst([0, 1]) == 1 and worst([1, 2, 0]) == 2 and worst([2, 130, 1]) == 130


# --- sinks and plugins: failures are recorded, never fatal -----------------------------------------


class Broken(Sink):
    name = "test_broken"

    def write(self, analyzer, result, entry):
        raise OSError("disk full (on purpose)")


class Plugin:
    @hookimpl
    def interpsuite_sinks(self):
        return [Broken]


def _registry():
    from interpsuite.plugins import get_registry

    return get_registry(extra_plugins=[Plugin()])


def test_a_failing_sink_is_recorded_and_the_run_goes_on(tmp_path, tiny_models):
    with pytest.warns(UserWarning, match="sink test_broken failed: OSError: disk full"):
        report = InterpretabilityPipeline(
            model=tiny_models["tiny_llama"],
            data=["one two three", "four five"],
            analyzers={"activation_stats": {}, "attention_entropy": {}},
            sinks=["rundir", "test_broken"],
            output_dir=tmp_path / "run",
            progress=False,
            registry=_registry(),
        ).run()
    payload = read_results(tmp_path / "run")
    assert [e["status"] for e in payload["analyzers"].values()] == ["ok", "ok"]
    assert payload["sinks"]["test_broken"] == {"status": "failed", "error": "OSError: disk full (on purpose)"}
    assert payload["sinks"]["rundir"]["status"] == "ok"
    assert report.exit_code == 0


def test_an_unwritable_figures_folder_costs_only_the_figures(tmp_path, tiny_models):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "figures").write_text("a file where the figures folder should be")
    with pytest.warns(UserWarning, match="sink rundir failed"):
        InterpretabilityPipeline(
            model=tiny_models["tiny_llama"],
            data=["one two three", "four five"],
            analyzers={"activation_stats": {}, "attention_entropy": {}},
            sinks=["rundir"],
            output_dir=run_dir,
            progress=False,
        ).run()
    payload = read_results(run_dir)
    assert set(payload["analyzers"]) == {"activation_stats", "attention_entropy"}
    assert all(entry["status"] == "ok" and entry["tables"] for entry in payload["analyzers"].values())
    assert payload["sinks"]["rundir"]["status"] == "failed"
    assert contract_errors(payload, run_dir) == []  # what the entries name exists


def test_plugin_load_errors_are_recorded_in_results(tmp_path, tiny_models, fake_site):
    from interpsuite.plugins import get_registry, reset_registry

    make_fake_distribution(fake_site, "broken-plugin", "broken_plugin", "raise ImportError('no luck')", "broken")
    reset_registry()
    try:
        with pytest.warns(UserWarning, match="no luck"):
            registry = get_registry()
        InterpretabilityPipeline(
            model=tiny_models["tiny_llama"],
            data=["one two"],
            analyzers={"activation_stats": {}},
            sinks=["rundir"],
            output_dir=tmp_path / "run",
            progress=False,
            registry=registry,
        ).run()
    finally:
        reset_registry()
    (error,) = read_results(tmp_path / "run")["plugins"]["errors"]
    assert "'broken' from distribution 'broken-plugin'" in error and "ImportError: no luck" in error


# --- inputs tell the truth -----------------------------------------------------------------------


class OwnPrompts(Analyzer):
    """Brings its own prompts, like causal tracing: the header must count these, not the data."""

    name = "test_own_prompts"

    def run(self, ctx):
        for _ in range(2):  # the same texts twice count once
            ctx.model.forward(ctx.model.tokenize(["ab", "cde", "fghi"]))
        return Result()


class OwnPromptsPlugin:
    @hookimpl
    def interpsuite_analyzers(self):
        return [OwnPrompts]


def test_header_counts_what_the_analyzers_used_and_reports_truncation(tmp_path, tiny_models):
    from interpsuite.plugins import get_registry
    from interpsuite.report import format_report

    texts = ["x" * 40, "short"]  # the byte tokenizer: one token per byte, no specials
    report = InterpretabilityPipeline(
        model=tiny_models["tiny_llama"],
        data={"texts": texts, "max_length": 16},
        analyzers={"test_own_prompts": {}},
        sinks=["rundir"],
        output_dir=tmp_path / "run",
        progress=False,
        registry=get_registry(extra_plugins=[OwnPromptsPlugin()]),
    ).run()
    payload = read_results(tmp_path / "run")
    assert payload["inputs"]["count"] == 3 and payload["inputs"]["n_tokens"] == 2 + 3 + 4
    assert payload["inputs"]["data"] == {"source": "inline", "count": 2, "truncated_texts": 1, "truncated_tokens": 24}
    assert payload["analyzers"]["test_own_prompts"]["inputs"]["count"] == 3
    assert "(3 texts, 9 tokens)" in format_report(report).splitlines()[0]


def test_truncation_is_counted_per_analyzer_and_error_refuses(tmp_path, tiny_models):
    texts = ["x" * 40, "y" * 20, "short"]
    common = dict(model=tiny_models["tiny_llama"], analyzers={"activation_stats": {}}, sinks=["rundir"], progress=False)
    InterpretabilityPipeline(data={"texts": texts, "max_length": 16}, output_dir=tmp_path / "warn", **common).run()
    inputs = read_results(tmp_path / "warn")["inputs"]
    assert (inputs["count"], inputs["n_tokens"], inputs["truncated_texts"], inputs["truncated_tokens"]) == (
        3,
        16 + 16 + 5,
        2,
        24 + 4,
    )
    strict = InterpretabilityPipeline(
        data={"texts": texts, "max_length": 16, "truncation": "error"}, output_dir=tmp_path / "error", **common
    )
    with pytest.raises(ConfigError, match=r"2 of 3 texts are longer than data.max_length=16 tokens \(up to 40\)"):
        strict.run()
    assert not (tmp_path / "error" / "results.json").exists()


def test_a_user_data_path_replaces_an_experiments_inline_texts(tmp_path):
    from interpsuite.config import compose

    path = tmp_path / "pairs.jsonl"
    path.write_text('{"text": "When Mary and John went out, John gave it to", "target": " Mary"}\n')
    overrides = ["+experiment=attribution", f"data.path={path}"]
    pipeline = InterpretabilityPipeline.from_config(compose(overrides), output_dir=tmp_path, user_overrides=overrides)
    plan = pipeline.validate()
    assert plan.inputs.source == str(path) and plan.inputs.extra["targets"] == [" Mary"]
    assert prefer_user_source({"texts": ["a"], "dataset": None, "path": "p"}, ["data.path=p"])["texts"] is None
    assert prefer_user_source({"texts": ["a"], "path": "p"}, ["model=x"]) == {"texts": ["a"], "path": "p"}


def test_validate_hands_run_the_resolved_config(tmp_path, tiny_models):
    from dataclasses import dataclass, replace

    from interpsuite import check_layers
    from interpsuite.plugins import get_registry

    @dataclass
    class Cfg:
        layer: int = -1

    class Resolving(Analyzer):
        name = "test_resolving"
        Config = Cfg

        def validate(self, info, cfg):
            return replace(cfg, layer=check_layers(info, [cfg.layer], "layer")[0])

        def run(self, ctx):
            return Result(metrics={"layer": self.cfg.layer})

    class WrongReturn(Resolving):
        name = "test_wrong_return"

        def validate(self, info, cfg):
            return [1]

    class P:
        @hookimpl
        def interpsuite_analyzers(self):
            return [Resolving, WrongReturn]

    registry = get_registry(extra_plugins=[P()])
    common = dict(model=tiny_models["tiny_llama"], data=["ab"], sinks=["rundir"], progress=False, registry=registry)
    report = InterpretabilityPipeline(analyzers={"test_resolving": {}}, output_dir=tmp_path / "a", **common).run()
    assert report.results["test_resolving"].metrics == {"layer": 1}  # tiny_llama has 2 layers: -1 -> 1
    with pytest.raises(Exception, match=r"test_wrong_return.validate\(\) returned list"):
        InterpretabilityPipeline(analyzers={"test_wrong_return": {}}, output_dir=tmp_path / "b", **common).validate()


def test_python_api_validates_the_same_settings(tmp_path):
    for kwargs, message in (
        ({"batch_size": "abc"}, "batch_size: expected an integer"),
        ({"data": {"texts": ["a"], "max_length": 0}}, "data.max_length must be >= 1"),
        ({"figures": {"formats": ["bmp"]}}, "figures.formats: 'bmp' is not one of"),
        ({"sinks": "rundir", "wandb": {"mode": "loud"}}, "wandb.mode: 'loud' is not one of"),
    ):
        options = {"model": "tiny_llama", "data": ["a"], "analyzers": ["activation_stats"], **kwargs}
        with pytest.raises(ConfigError, match=message):
            InterpretabilityPipeline(output_dir=Path(tmp_path) / "x", **options).validate()


@pytest.mark.slow
def test_a_target_that_lost_its_space_to_the_shell_gets_a_note(smollm2):
    paris, note = smollm2.token_id("Paris", "logit_lens target")
    spaced, no_note = smollm2.token_id(" Paris", "logit_lens target")
    assert paris != spaced and no_note == ""
    assert f"mid-sentence the word is ' Paris' (id {spaced})" in note and "quote the whole override" in note
