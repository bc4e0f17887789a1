"""A/B of the API's accept path: `python bench/api_ab.py [--base main] [-n 300] [--rounds 5]`.

Starts three servers side by side, as `bench/api.py` starts them: DOX's `dox api serve` from a
``git archive`` of ``--base`` (its own scratch database and namespace), DOX's from this work
tree, and the hand-written peer; then interleaved accept rounds (the order rotates) of N unique
one-page PDFs from 16 clients. Prints each round and, per server, the median rate and CPU per
upload by component, and each DOX's rate and CPU ratios against the peer. With three servers
on the cores the rates are lower than `bench/api.py`'s; compare the CPU per upload.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples"), str(ROOT / "bench")]

import api  # noqa: E402 - bench/ is on sys.path from here on
import pipeline  # noqa: E402


def _tree(rev: str, into: Path) -> Path:
    """The files of ``rev`` (a commit or branch), unpacked: a server started in it imports them."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _start_in(tree: Path, dox: pipeline.Dox, workdir: Path, workers: int) -> api.Peer:
    """``start_dox_api`` with the server's working directory (first on its sys.path) in ``tree``."""
    dox.env["PYTHONPATH"] = str(tree)
    spawn = api.spawn
    api.spawn = lambda args, env, log: spawn(args, env, log, cwd=tree)
    try:
        return api.start_dox_api(dox, workdir, workers)
    finally:
        api.spawn = spawn


def _median(peer: api.Peer, part: str) -> float:
    return statistics.median(c[part] for c in peer.costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="main", help="the revision to compare this tree with")
    parser.add_argument("-n", type=int, default=300, help="uploads per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=pipeline.CORES)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dox-bench-ab-"))
    extra: dict[str, Any] = {
        "DOX_API_RATE_PER_MIN": "0",
        "RATE_LIMIT_PER_USER_PER_DAY": str(10**9),
        "API_KEY": secrets.token_hex(32),
    }
    stacks: list[pipeline.Dox] = []
    peers: list[api.Peer] = []
    try:
        tree = _tree(args.base, workdir / "base-tree")
        for name in ("base", "this"):
            (workdir / name).mkdir()
            stacks.append(pipeline.Dox(workdir / name, "tcp://127.0.0.1:1", **extra))
        peers.append(_start_in(tree, stacks[0], workdir / "base", args.workers))
        peers.append(_start_in(ROOT, stacks[1], workdir / "this", args.workers))
        peers.append(api.start_handwritten(workdir, args.workers))
        names = [args.base, "this tree", "handwritten"]
        for k, peer in enumerate(peers):  # warm-up
            peer.accept_round(80, 10**8 + k * 10**4, 16)
            peer.forget()
        for r in range(args.rounds):
            for k in [(r + i) % 3 for i in range(3)]:
                peer = peers[k]
                peer.accept_round(args.n, (r + 1) * 10**6 + k * 10**5, 16)
                costs = " ".join(f"{part} {value:.2f}" for part, value in peer.costs[-1].items())
                pipeline.note(f"round {r + 1}: {names[k]} {peer.rates[-1]:.0f}/s, CPU ms/upload {costs}")
        for name, peer in zip(names, peers, strict=True):
            parts = " ".join(f"{p} {_median(peer, p):.2f}" for p in ("workers", "postgres", "redis", "total"))
            print(f"{name}: {statistics.median(peer.rates):.0f} uploads/s; CPU ms/upload {parts}")
        hand = peers[2]
        for name, peer in zip(names[:2], peers[:2], strict=True):
            rates = [d / h for d, h in zip(peer.rates, hand.rates, strict=True)]
            cpus = [h["total"] / d["total"] for d, h in zip(peer.costs, hand.costs, strict=True)]
            print(
                f"{name}: rate ratio {statistics.median(rates):.2f} ({' '.join(f'{x:.2f}' for x in rates)}),"
                f" CPU ratio {statistics.median(cpus):.2f} ({' '.join(f'{x:.2f}' for x in cpus)})"
            )
    finally:
        for peer in peers:
            pipeline.stop(peer.proc)
        if len(peers) > 2:
            pipeline._drop_keys(peers[2].prefix)
        for dox in stacks:
            dox.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
