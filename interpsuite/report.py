"""A short plain-text summary of a finished run for the terminal."""

from __future__ import annotations

from .pipeline import RunReport


def format_report(report: RunReport) -> str:
    payload = report.payload
    lines = [
        f"interpsuite run '{payload['experiment']}' on {payload['model']['name']} "
        f"({payload['inputs']['count']} texts, {payload['inputs']['n_tokens']} tokens) "
        f"in {payload['duration_s']:.1f} s",
    ]
    for name, entry in payload["analyzers"].items():
        checks = entry["checks"]
        passed = sum(1 for c in checks.values() if c["passed"])
        if entry["status"] == "skipped":
            lines.append(f"  {name:<24} skipped: {entry['error']}")
            continue
        state = entry["status"] if entry["status"] == "ok" else f"FAILED: {entry['error']}"
        lines.append(
            f"  {name:<24} {state:<8} {entry['duration_s']:6.1f} s  checks {passed}/{len(checks)} passed"
            f"  figures {len(entry['figures'])}  tables {len(entry['tables'])}"
        )
    lines.append(f"results: {report.run_dir / 'results.json'}")
    return "\n".join(lines)
