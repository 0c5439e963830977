"""A short plain-text summary of a finished run for the terminal."""

from __future__ import annotations

from .pipeline import RunReport


def _inputs_text(inputs: dict) -> str:
    text = f"{inputs.get('count', 0)} texts, {inputs.get('n_tokens', 0)} tokens"
    if inputs.get("truncated_texts"):
        text += f"; {inputs['truncated_texts']} truncated, {inputs['truncated_tokens']} tokens cut"
    return text


def format_report(report: RunReport) -> str:
    """The header counts what the analyzers fed the model (their own prompts included), not the
    data group; an analyzer whose inputs differ from the run's says so on its own line."""
    payload = report.payload
    inputs = payload["inputs"]
    lines = [
        f"interpsuite run '{payload['experiment']}' on {payload['model']['name']} "
        f"({_inputs_text(inputs)}) in {payload['duration_s']:.1f} s",
    ]
    if inputs.get("truncated_texts"):
        lines.append(
            f"  warning: texts longer than max_length={inputs.get('max_length')} tokens were truncated; "
            f"raise data.max_length, or data.truncation=error to refuse them"
        )
    for name, entry in payload["analyzers"].items():
        checks = entry["checks"]
        passed = sum(1 for c in checks.values() if c["passed"])
        if entry["status"] in ("skipped", "interrupted"):
            lines.append(f"  {name:<24} {entry['status']}: {entry['error']}")
            continue
        state = entry["status"] if entry["status"] == "ok" else f"FAILED: {entry['error']}"
        used = entry.get("inputs")
        used_text = ""
        if used and used.get("count") != inputs.get("count"):
            used_text = f"  on {used['count']} text{'s' if used['count'] != 1 else ''}"
        lines.append(
            f"  {name:<24} {state:<8} {entry['duration_s']:6.1f} s  checks {passed}/{len(checks)} passed"
            f"  figures {len(entry['figures'])}  tables {len(entry['tables'])}{used_text}"
        )
    for name, sink in payload.get("sinks", {}).items():
        if sink["status"] != "ok":
            lines.append(f"  sink {name} FAILED: {sink['error']} (the other sinks and results.json are kept)")
    for error in payload.get("plugins", {}).get("errors", []):
        lines.append(f"  plugin error: {error}")
    lines.append(f"results: {report.run_dir / 'results.json'}")
    return "\n".join(lines)
