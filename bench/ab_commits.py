"""Two commits of DOX, benchmarked alternately: did a change cost CPU per workflow?

    python bench/ab_commits.py OLD_CHECKOUT NEW_CHECKOUT [--pairs 3] [-n 300] [--rounds 3]

Each checkout needs its own ``.venv`` with DOX installed from it (the README's test
command). The script runs each checkout's own ``bench/pipeline.py --big-mib 0``
alternately (old, new, old, new, …) on the same services, and reads from each run's
round notes DOX's CPU ms per workflow (``dox_noop``: the five queues with no-op step
bodies, i.e. DOX's own bookkeeping and Celery) and the calibration loop of the same
round. The figure compared is their quotient, so the VM's drift between runs (2× within
minutes here) cancels out: per run the median over its rounds, per commit the median
over its runs; which commit runs first alternates from pair to pair. As a check, the
same is printed with the Celery-layout peer of the same round as the divisor.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROUND_CAL = re.compile(r"^# round (\d+): calibration loop (\d+) CPU ms")
ROUND_DOX = re.compile(r"^# round (\d+): dox_noop [\d.]+ workflows/s, ([\d.]+) CPU ms/workflow")
ROUND_LAYOUT = re.compile(r"^# round (\d+): celery_layout [\d.]+ workflows/s, ([\d.]+) CPU ms/workflow")


def say(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


def relative_cost(output: str) -> tuple[float, float]:
    """Medians over the run's rounds of DOX's CPU ms per workflow divided by (1) the
    calibration loop's CPU ms and (2) the Celery-layout peer's CPU ms per workflow, each
    measured in the same round (the second is a check on the first: the peer does the
    same Celery work on the same services moments earlier)."""
    found: dict[re.Pattern[str], dict[int, float]] = {ROUND_CAL: {}, ROUND_DOX: {}, ROUND_LAYOUT: {}}
    for line in output.splitlines():
        for pattern, values in found.items():
            if m := pattern.match(line):
                values[int(m.group(1))] = float(m.group(2))
    cal, dox, layout = found[ROUND_CAL], found[ROUND_DOX], found[ROUND_LAYOUT]
    rounds = sorted(set(cal) & set(dox) & set(layout))
    if not rounds:
        raise SystemExit("no round figures in the benchmark's output:\n" + output[-3000:])
    return (
        statistics.median(dox[r] / cal[r] for r in rounds),
        statistics.median(dox[r] / layout[r] for r in rounds),
    )


def run_once(checkout: Path, extra: list[str]) -> tuple[float, float]:
    python = checkout / ".venv" / "bin" / "python"
    cmd = [str(python), str(checkout / "bench" / "pipeline.py"), "--big-mib", "0", *extra]
    done = subprocess.run(cmd, cwd=checkout, capture_output=True, text=True, timeout=3600)
    output = done.stdout + done.stderr
    print(output, file=sys.stderr, flush=True)  # the whole run, for the record
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: the benchmark failed ({done.returncode}):\n{output[-3000:]}")
    return relative_cost(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="length of pipeline.py's latency run")
    args = parser.parse_args()
    extra = ["-n", str(args.n), "--rounds", str(args.rounds), "--seconds", str(args.seconds)]
    costs: dict[str, list[tuple[float, float]]] = {"old": [], "new": []}
    order = [("old", args.old), ("new", args.new)]
    for pair in range(args.pairs):
        # Which goes first alternates, so a drift within a pair does not favour one side.
        for label, checkout in order if pair % 2 == 0 else order[::-1]:
            cost = run_once(checkout.resolve(), extra)
            costs[label].append(cost)
            print(
                f"# pair {pair + 1} {label}: {cost[0]:.4f} DOX CPU ms/workflow per calibration CPU ms,"
                f" {cost[1]:.3f}x the Celery layout's",
                file=sys.stderr,
                flush=True,
            )
    for k, figure in enumerate(("cpu_per_calibration", "cpu_vs_celery_layout")):
        for label in ("old", "new"):
            runs = [c[k] for c in costs[label]]
            say(f"{label}_dox_{figure}_runs", " ".join(f"{c:.4f}" for c in runs))
            say(f"{label}_dox_{figure}", f"{statistics.median(runs):.4f}")
        ratio = statistics.median(c[k] for c in costs["new"]) / statistics.median(c[k] for c in costs["old"])
        say(f"new_vs_old_{figure}", f"{ratio:.3f}")


if __name__ == "__main__":
    main()
