"""Print README's "How it compares" table from the committed peer results (benchmarks/results/peers.json).

    python benchmarks/peers/readme_table.py            # paste the output into README.md

The README quotes measurements only: this reads them, it never types a number in by hand.
Columns: each implementation's median seconds and, for peers, how many times slower than interpsuite.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "results" / "peers.json"
COLUMNS = (
    ("interpsuite", ("interpsuite", "interpsuite_readme")),
    ("plain PyTorch loop", ("plain",)),
    ("TransformerLens", ("transformer_lens",)),
    ("nnsight", ("nnsight",)),
    ("captum", ("captum",)),
    ("SAELens", ("sae_lens",)),
)


def cell_text(cell: dict | None, reference: bool) -> str:
    if cell is not None and cell.get("status") == "error":
        return "raised"
    if cell is None or cell.get("status") != "ok":
        return "—"
    seconds = f"{cell['median_s']:.3g} s"
    ratio = cell.get("ratio_to_interpsuite")
    if reference or ratio is None:
        return seconds
    agrees = "" if cell.get("agreement", {}).get("agrees", True) else " (differs)"
    return f"{seconds} ({ratio:.2f}×){agrees}"


def agreement_text(report: dict) -> str:
    """The agreement sentence: all cells, or all but the peers racing in a shared-model workload."""
    if report["all_agree"]:
        return "every cell agrees with interpsuite to 1e-4 (absolute or relative). "
    if report.get("passes"):
        return (
            "every cell agrees with interpsuite to 1e-4 (absolute or relative), except peers racing on a model "
            "shared by 4 threads (marked differs, or raised). "
        )
    return ""


def table(report: dict) -> str:
    settings, machine = report["settings"], report["machine"]
    lines = [
        "| workload | " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for summary in report["workloads"].values():
        cells = summary["cells"]
        row = [summary["title"]]
        for _, keys in COLUMNS:
            key = next((k for k in keys if k in cells), None)
            row.append(cell_text(cells.get(key) if key else None, key == summary["reference"]))
        lines.append("| " + " | ".join(row) + " |")
    when = report["timestamp"][:10]
    lines.append("")
    lines.append(
        f"{settings['model']} on {settings['device']}, {settings['threads']} torch threads, "
        f"{machine.get('cpu_count')}-CPU {machine.get('processor', '')}, median of {settings['repeats']}, {when}; "
        + agreement_text(report)
        + "(N×: times interpsuite's time.) "
        "Source: `benchmarks/results/peers.json` (`python benchmarks/peers/run.py --all`)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    print(table(json.loads(args.results.read_text())))


if __name__ == "__main__":
    main()
