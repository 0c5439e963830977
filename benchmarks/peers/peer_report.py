"""Agreement between cells, and the JSON + markdown the peer benchmark writes.

Pure functions of the cells' records and numbers (no torch model, no timing), so the tests can
check them on hand-made inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

TOLERANCE = 1e-4

WORKLOAD_TITLES = {
    "capture": "capture of all residual streams",
    "head_sweep": "zero-ablation sweep of every head",
    "patching": "resid_pre patching, every layer x position",
    "ig": "integrated gradients, 50 steps",
    "attention": "all attention patterns of one prompt",
    "sae": "live SAE feature edits (error term kept)",
    "concurrency": "head sweep on 4 threads sharing one model",
}

#: workloads where a peer's disagreement is the finding, reported but not failed: 4 threads
#: share one model, and peers hook modules (global to every thread), so their numbers can race.
#: The reference (interpsuite) cell must still agree, and it checks itself against the
#: sequential run (it raises, failing the run, when its threads' numbers differ).
RACE_REPORTED = {"concurrency"}
RACE_NOTE = "shared-model race: module hooks seen by other threads"
RACE_MARK = "\u2020"


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b|, or inf when the shapes differ (a cell that computed something else)."""
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def max_rel_diff(a: np.ndarray, reference: np.ndarray) -> float:
    """max |a - reference| / max |reference|: the difference on the scale of the numbers compared
    (residual streams reach hundreds, where float32 alone leaves differences of 1e-3)."""
    diff = max_abs_diff(a, reference)
    scale = float(np.max(np.abs(reference.astype(np.float64)))) if reference.size else 0.0
    return diff / scale if scale > 0 and np.isfinite(diff) else diff


def agreement(values: dict[str, np.ndarray], reference: str, tolerance: float = TOLERANCE) -> dict[str, dict[str, Any]]:
    """Each cell's max |difference| from the reference cell and from every other cell; it agrees
    when its difference from the reference is within tolerance, absolute or relative to the
    reference's largest magnitude. Cells without numbers are absent."""
    result: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        others = {other: max_abs_diff(value, values[other]) for other in values if other != name}
        vs_reference = 0.0 if name == reference else others.get(reference)
        relative = None
        if name == reference:
            relative = 0.0
        elif reference in values:
            relative = max_rel_diff(value, values[reference])
        agrees = vs_reference is not None and (
            vs_reference <= tolerance or (relative is not None and relative <= tolerance)
        )
        result[name] = {
            "max_abs_diff_vs_reference": vs_reference,
            "max_rel_diff_vs_reference": relative,
            "max_abs_diff_vs_others": others,
            "agrees": agrees,
            "tolerance": tolerance,
        }
    return result


def summarise_workload(
    workload: str,
    cells: dict[str, dict[str, Any]],
    values: dict[str, np.ndarray],
    reference: str,
    tolerance: float = TOLERANCE,
) -> dict[str, Any]:
    """One workload's cells with ratio to the reference's median time and agreement added."""
    ok = {name: cell for name, cell in cells.items() if cell.get("status") == "ok"}
    base = ok.get(reference, {}).get("median_s")
    agree = agreement(values, reference, tolerance) if reference in values else {}
    out_cells = {}
    for name, cell in cells.items():
        entry = {key: value for key, value in cell.items() if key != "traceback"}
        if name in ok and base:
            entry["ratio_to_interpsuite"] = ok[name]["median_s"] / base
        if name in agree:
            entry["agreement"] = agree[name]
            if workload in RACE_REPORTED and not agree[name]["agrees"]:
                entry["race_note"] = RACE_NOTE
        out_cells[name] = entry
    summary: dict[str, Any] = {
        "title": WORKLOAD_TITLES.get(workload, workload),
        "reference": reference,
        "cells": out_cells,
    }
    if workload == "capture" and "bare" in ok and reference in ok:
        summary["capture_over_bare"] = {
            name: ok[name]["median_s"] / ok["bare"]["median_s"] for name in ok if name != "bare"
        }
    summary["all_agree"] = bool(agree) and all(entry["agrees"] for entry in agree.values())
    summary["race_reported"] = workload in RACE_REPORTED
    summary["passes"] = passes(workload, agree, reference)
    return summary


def passes(workload: str, agree: dict[str, dict[str, Any]], reference: str) -> bool:
    """Whether the workload lets the run exit 0: every cell agrees with the reference, or, in a
    `RACE_REPORTED` workload, the reference ran and gave numbers (peers' disagreement is
    reported). A workload whose reference has no numbers (it raised) always fails."""
    if reference not in agree:
        return False
    if workload in RACE_REPORTED:
        return True
    return all(entry["agrees"] for entry in agree.values())


def markdown(report: dict[str, Any]) -> str:
    """The table: workload x implementation, seconds, ratio to interpsuite, agreement, kernel, RSS."""
    settings, machine = report["settings"], report["machine"]
    lines = [
        f"# Peer benchmark ({settings['model']}, {settings['device']}, {settings['threads']} threads"
        f"{', quick' if settings['quick'] else ''})",
        "",
        f"{report['timestamp']}; {machine.get('processor', '')}; {machine.get('cpu_count')} CPUs; "
        f"torch {machine.get('torch')}, transformers {machine.get('transformers')}; "
        f"median of {settings['repeats']} after {settings['warmup']} warm-up; load average "
        f"{_loads(report['load_average']['start'])} at start, {_loads(report['load_average']['end'])} at end.",
        "",
        "| workload | implementation | library | attention | median s | x interpsuite | max \\|diff\\| | relative "
        "| agrees | peak RSS MiB | RSS growth MiB |",
        "|---|---|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for summary in report["workloads"].values():
        for name, cell in summary["cells"].items():
            if cell.get("status") != "ok":
                lines.append(
                    f"| {summary['title']} | {name} | {cell.get('library', '')} | | {cell.get('status')}: "
                    f"{cell.get('reason', '')} | | | | | | |"
                )
                continue
            agree = cell.get("agreement")
            diff = (
                "reference"
                if name == summary["reference"]
                else ("-" if agree is None else f"{agree['max_abs_diff_vs_reference']:.1e}")
            )
            relative = agree.get("max_rel_diff_vs_reference") if agree and name != summary["reference"] else None
            rel = "-" if relative is None else f"{relative:.1e}"
            agrees = "-" if agree is None else ("yes" if agree["agrees"] else "**no**")
            if "race_note" in cell:
                agrees += RACE_MARK
            ratio = cell.get("ratio_to_interpsuite")
            lines.append(
                f"| {summary['title']} | {name} | {cell.get('library', '')} | {cell.get('attention', '')} | "
                f"{cell['median_s']:.4g} | {'' if ratio is None else f'{ratio:.2f}x'} | {diff} | {rel} | {agrees} | "
                f"{cell.get('peak_rss_mib', 0):.0f} | {cell.get('rss_growth_mib', 0):.0f} |"
            )
    races = [summary["title"] for summary in report["workloads"].values() if summary.get("race_reported")]
    if races:
        lines += [
            "",
            f"{RACE_MARK} {'; '.join(races)}: a peer cell that differs or raises is the finding, reported and "
            f"not failed ({RACE_NOTE}); the interpsuite cell raises, and fails the run, unless its numbers "
            "equal the same sweep run sequentially.",
        ]
    for summary in report["workloads"].values():
        if "capture_over_bare" in summary:
            ratios = ", ".join(f"{name} {ratio:.3f}x" for name, ratio in summary["capture_over_bare"].items())
            lines += ["", f"Capture time / bare forward (no hooks): {ratios}."]
    lines += [
        "",
        f"Agreement: max |difference| from the reference cell, absolute and relative to the reference's largest "
        f"magnitude (a cell agrees when either is within {report['tolerance']:g}); "
        "the JSON also holds every pair's difference. Peak RSS is the cell process's "
        "`ru_maxrss` (model loading included; peer and plain cells also hold an unwrapped copy of the model); "
        "RSS growth is how far the timed runs pushed it above the level after setup.",
    ]
    return "\n".join(lines) + "\n"


def _loads(loads) -> str:
    return "/".join(f"{load:.1f}" for load in loads)


def write(report: dict[str, Any], out_dir: Path, stem: str) -> tuple[Path, Path]:
    """`stem`.json and `stem`.md in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown(report), encoding="utf-8")
    return json_path, md_path
