"""Issue #12's goals as ratios between servers measured in the same ``bench/peers.sh`` run.

Reads the run's ``points.jsonl`` (one line per perf_analyzer point, written by the peer harness),
takes per server, model and concurrency the median over the passes, exactly as the harness's
table does, and puts a "Goals" section on top of the results file: for each goal and model,
neuroserve's figure, the peer's, their ratio and whether it meets the target. Only servers of
this one run are compared, never figures from elsewhere: that is the point of the run.

    python bench/peers_ratios.py --run-dir bench/.peers/runs/<ts> --results bench/.peers/results.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SECTION = "## Goals (issue #12), from this run"


@dataclass(frozen=True)
class Goal:
    """``ours`` against each present server of ``peers`` on one metric at one concurrency.

    ``metric`` is ``p50_us`` (lower is better: the ratio is ours / peer and must be at most
    ``target``) or ``infer_per_s`` (the ratio is ours / peer and must be at least ``target``).
    ``target`` None marks a row that is context, not a goal.
    """

    text: str
    ours: str
    peers: tuple[str, ...]
    metric: str
    concurrency: int
    target: float | None


def goals(low: int, high: int) -> list[Goal]:
    """The goals of issue #12's "What must be true" that one peers.sh run can check."""
    return [
        Goal(
            f"gRPC c={low} p50 ≤ naive server's", "neuroserve", ("floor-ort",), "p50_us", low, 1.0
        ),
        Goal(
            f"gRPC c={high} ≥ 1.2 × PyTriton",
            "neuroserve",
            ("pytriton", "pytriton-nodelay"),
            "infer_per_s",
            high,
            1.2,
        ),
        Goal(
            f"gRPC c={high} ≥ 4 × MLServer",
            "neuroserve",
            ("mlserver-batch", "mlserver"),
            "infer_per_s",
            high,
            4.0,
        ),
        Goal(
            f"streaming c={high} ≥ 1.4 × unary c={high}",
            "neuroserve-stream",
            ("neuroserve",),
            "infer_per_s",
            high,
            1.4,
        ),
        Goal(
            f"REST c={high} ≥ 0.8 × bare HTTP echo",
            "neuroserve-http",
            ("http-echo",),
            "infer_per_s",
            high,
            0.8,
        ),
        Goal(
            f"REST c={high} ≥ 3 × MLServer REST",
            "neuroserve-http",
            ("mlserver-batch-http", "mlserver-http"),
            "infer_per_s",
            high,
            3.0,
        ),
        Goal(
            f"gRPC c={high} no worse than before by > 5 %",
            "neuroserve",
            ("neuroserve-base",),
            "infer_per_s",
            high,
            0.95,
        ),
        Goal(
            f"gRPC c={low} p50 no worse than before by > 5 %",
            "neuroserve",
            ("neuroserve-base",),
            "p50_us",
            low,
            1.05,
        ),
        Goal(
            f"context: gRPC c={high} vs the Python gRPC floor",
            "neuroserve",
            ("floor-echo", "floor-ort"),
            "infer_per_s",
            high,
            None,
        ),
    ]


def medians(points: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Per (server, model, concurrency): median p50 and throughput over passes, and how measured.

    Like the harness's table, one attempt counts per pass: the usable one when a pass retried a
    point with fixed windows.
    """
    per_pass: dict[tuple[str, str, int, int], dict[str, Any]] = {}
    for p in points:
        key = (p["server"], p["model"], p["concurrency"], p.get("repeat", 1))
        if p["result"] is not None or key not in per_pass:
            per_pass[key] = p
    grouped: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for (server, model, conc, _), p in per_pass.items():
        grouped.setdefault((server, model, conc), []).append(p)
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    for cell, ps in grouped.items():
        ok = [p for p in ps if p["result"] is not None]
        out[cell] = {
            "p50_us": statistics.median(p["result"]["p50_us"] for p in ok) if ok else None,
            "infer_per_s": statistics.median(p["result"]["infer_per_s"] for p in ok)
            if ok
            else None,
            "passes": len(ok),
            "fixed": sum(1 for p in ok if p["fixed_windows"]),
            "failed": len(ps) - len(ok),
        }
    return out


def _fmt(value: float | None, metric: str) -> str:
    if value is None:
        return "failed"
    return f"{value:,.0f} µs" if metric == "p50_us" else f"{value:,.0f}/s"


def _how(cell: dict[str, Any]) -> str:
    """A note when a figure is weaker than stable windows in every pass."""
    notes = []
    if cell["fixed"]:
        notes.append(f"{cell['fixed']} pass(es) fixed windows")
    if cell["failed"]:
        notes.append(f"{cell['failed']} pass(es) failed")
    return f" ({', '.join(notes)})" if notes else ""


def section(
    points: list[dict[str, Any]], models: list[str], notes: list[str], low: int, high: int
) -> list[str]:
    """The markdown "Goals" section for the run's points; the goals name c=``low``, c=``high``."""
    cells = medians(points)
    passes = max((p.get("repeat", 1) for p in points), default=0)
    lines = [SECTION, ""]
    lines.append(
        "Ratios between servers measured in this run (median over passes, see the table below). "
        "p50 ratios are neuroserve / peer (lower is better), throughput ratios neuroserve / peer "
        "(higher is better). A goal whose servers were not in this run is listed as such."
        + (" **One pass only: treat ratios as rough.**" if passes < 2 else "")
    )
    lines += [f"- {note}" for note in notes]
    lines += ["", "| goal | model | neuroserve | peer | peer figure | ratio | target | met |"]
    lines.append("|---|---|---:|---|---:|---:|---:|---|")
    if not cells:
        return [*lines, "", "No point was measured.", ""]
    for goal in goals(low, high):
        for model in models:
            ours = cells.get((goal.ours, model, goal.concurrency))
            present = [s for s in goal.peers if (s, model, goal.concurrency) in cells]
            if ours is None or not present:
                missing = goal.ours if ours is None else " / ".join(goal.peers)
                lines.append(
                    f"| {goal.text} | {model} | | | | | {_target(goal)} | "
                    f"not in this run ({missing} at c={goal.concurrency}) |"
                )
                continue
            for peer in present:
                theirs = cells[(peer, model, goal.concurrency)]
                a, b = ours[goal.metric], theirs[goal.metric]
                ratio = a / b if a is not None and b else None
                if ratio is None or goal.target is None:
                    met = "" if goal.target is None else "no figure"
                elif goal.metric == "p50_us":
                    met = "yes" if ratio <= goal.target else "**no**"
                else:
                    met = "yes" if ratio >= goal.target else "**no**"
                lines.append(
                    f"| {goal.text} | {model} | {_fmt(a, goal.metric)}{_how(ours)} | {peer} | "
                    f"{_fmt(b, goal.metric)}{_how(theirs)} | "
                    f"{'' if ratio is None else f'{ratio:.2f}'} | {_target(goal)} | {met} |"
                )
    lines.append("")
    return lines


def _target(goal: Goal) -> str:
    if goal.target is None:
        return ""
    return f"≤ {goal.target:g}" if goal.metric == "p50_us" else f"≥ {goal.target:g}"


def insert(results: str, block: list[str]) -> str:
    """``results`` with ``block`` before its first ``## `` heading, replacing an older block."""
    lines = results.splitlines()
    if SECTION in lines:
        start = lines.index(SECTION)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        del lines[start:end]
    at = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    return "\n".join(lines[:at] + block + lines[at:]) + "\n"


def main() -> None:
    """Read the run, print the section, and write it into the results file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="holds points.jsonl")
    parser.add_argument("--results", type=Path, required=True, help="results.md to put it in")
    parser.add_argument("--note", action="append", default=[], help="a line to add (repeatable)")
    parser.add_argument("--low", type=int, default=1, help="the goals' low concurrency (1)")
    parser.add_argument("--high", type=int, default=32, help="the goals' high concurrency (32)")
    args = parser.parse_args()
    path = args.run_dir / "points.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: not a peer-harness run directory")
    points = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    env_path = args.run_dir / "env.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    models = env.get("models") or sorted({p["model"] for p in points})
    block = section(points, models, [n for n in args.note if n], args.low, args.high)
    print("\n".join(block))
    results = args.results.read_text() if args.results.is_file() else ""
    args.results.write_text(insert(results, block))


if __name__ == "__main__":
    main()
