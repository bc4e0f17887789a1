"""DOX HTTP API benchmark: `python bench/api.py` (no arguments needed; `--quick`: a short smoke run).

Runs the real servers against the Redis, PostgreSQL and clamd of bench/pipeline.py (same
environment variables, a scratch database, a clamd of its own unless DOX_CLAMD_URL is set)
and prints one `name: value` line per figure:

- ``api_accept_per_s``, ``api_accept_p99_ms``: 16 concurrent keep-alive clients post unique
  one-page PDFs (multipart, field ``file``, a key made by ``dox apikeys create``) to
  ``dox api serve --workers W``'s ``POST /api/v1/documents``; latency until the 202. No pipeline
  worker runs: the messages queue, and are dropped between rounds.
- ``api_accept_ratio_vs_handwritten``: DOX's accept rate over that of the same load against
  ``bench/handwritten_api.py`` (FastAPI ``UploadFile``, the file saved to a folder, a bare
  Celery ``send_task``) on uvicorn with the same settings (httptools, W workers, log level
  info). Interleaved rounds, first one then the other (the order alternates), the ratio taken
  per round and the median printed, with every round's.
- ``api_end_to_end_ratio_vs_submit``: N one-page PDFs posted to the API, then waited for until
  all N are terminal in PostgreSQL, against the same N through ``dox_tasks.submit()``; DOX's
  workers as bench/pipeline.py runs them (the docker-compose.yml layout), interleaved rounds;
  ``*_end_to_end_cpu_ms_per_doc``: the CPU of everything (workers, API server, PostgreSQL,
  Redis, this process) per document.
- ``api_upload_rss_growth_mib_50mib``: how much the API server's process tree (PSS, sampled
  every 20 ms) grows while one 50 MiB PDF is posted; the same for the hand-written peer.
- CPU per accepted upload by component (server processes, PostgreSQL, Redis, this client),
  from /proc over each timed run (bench/cpu.py), and the calibration loop at each round;
  ``api_accept_cpu_ratio_vs_handwritten``: the peer's CPU per upload over DOX's, per round
  (the rate ratio to expect when the servers have the cores to themselves).

The load generator is a small asyncio HTTP/1.1 client over raw sockets with every request
built before the clock starts: on a 2-core machine the client shares the cores with the
servers, and the lighter it is the less it flattens the ratio between them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples"), str(ROOT / "bench")]

import cpu  # noqa: E402 - bench/, tests/ and examples/ are on sys.path from here on
import pdfs  # noqa: E402
import pipeline  # noqa: E402
from pipeline import (  # noqa: E402
    CORES,
    REDIS_URL,
    Dox,
    make_big_pdf,
    note,
    say,
    spawn,
    stop,
    tree_rss_kib,
)
from services import Clamd, free_port  # noqa: E402

PATH = "/api/v1/documents"
BIG_MIB = 50


# -- the HTTP client -------------------------------------------------------------------------
@dataclass
class Reply:
    status: int
    seconds: float
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def multipart(data: bytes, file_name: str) -> tuple[bytes, bytes, str]:
    """(preamble, epilogue, content type) of a multipart body with one part ``file``."""
    boundary = f"bench{uuid.uuid4().hex}"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
        "Content-Type: application/pdf\r\n\r\n"
    ).encode()
    return head, f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request_head(port: int, headers: dict[str, str], ctype: str, length: int) -> bytes:
    lines = [f"POST {PATH} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Type: {ctype}"]
    lines += [f"Content-Length: {length}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def upload_request(port: int, headers: dict[str, str], data: bytes, file_name: str) -> bytes:
    """One whole POST of ``data`` as the multipart part ``file``, ready to write."""
    head, tail, ctype = multipart(data, file_name)
    body = head + data + tail
    return request_head(port, headers, ctype, len(body)) + body


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
    if "content-length" not in fields:
        raise RuntimeError(f"answer {status} without Content-Length: {fields}")
    body = await reader.readexactly(int(fields["content-length"]))
    return status, body, fields.get("connection", "").lower() == "close"


async def _load(port: int, requests: list[bytes], concurrency: int) -> tuple[float, list[Reply]]:
    results: list[Reply | None] = [None] * len(requests)
    todo = iter(range(len(requests)))  # shared by the clients: one event loop, no race
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for i in todo:
                t = time.perf_counter()
                writer.write(requests[i])
                await writer.drain()
                status, body, close = await read_reply(reader)
                results[i] = Reply(status, time.perf_counter() - t, body)
                if close:
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(r, w) for r, w in conns))
    elapsed = time.perf_counter() - t0
    return elapsed, [r for r in results if r is not None]


def post_all(port: int, requests: list[bytes], concurrency: int) -> tuple[float, list[Reply]]:
    """Send every request over ``concurrency`` keep-alive connections; (seconds, replies)."""
    return asyncio.run(_load(port, requests, concurrency))


async def _post_file(port: int, headers: dict[str, str], path: Path) -> Reply:
    head, tail, ctype = multipart(b"", path.name)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    t = time.perf_counter()
    writer.write(request_head(port, headers, ctype, len(head) + path.stat().st_size + len(tail)) + head)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            writer.write(chunk)
            await writer.drain()
    writer.write(tail)
    await writer.drain()
    status, body, _ = await read_reply(reader)
    writer.close()
    return Reply(status, time.perf_counter() - t, body)


def accepted(replies: list[Reply], n: int, who: str) -> list[str]:
    """The workflow ids of N answers, asserting every one was a 202 saying queued."""
    bad = [r for r in replies if r.status != 202]
    assert len(replies) == n and not bad, f"{who}: {len(bad)} of {n} not 202, e.g. {bad[:1]}"
    ids = [r.json()["workflow_id"] for r in replies]
    assert all(r.json()["status"] == "queued" for r in replies) and len(set(ids)) == n, who
    return ids


# -- the servers -----------------------------------------------------------------------------
def wait_started(proc: Any, log: Path, workers: int, port: int) -> None:
    """Until every uvicorn worker has said so in its log, and /health answers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        if log.read_text(errors="replace").count("Application startup complete") >= workers:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                assert r.status == 200
            return
        time.sleep(0.1)
    raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")


def drop_queued(prefix: str) -> None:
    """Empty the queues (lists) under ``prefix``; kombu's bindings stay, so sending still works."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*", count=1000):
        if client.type(key) == b"list":
            client.delete(key)


@dataclass
class Peer:
    """A server under the upload load: how to build its requests and clean up after a round."""

    name: str
    proc: Any
    port: int
    headers: dict[str, str]
    prefix: str  # its keys on the shared Redis
    clean: Callable[[], None]
    rates: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)
    costs: list[dict[str, float]] = field(default_factory=list)

    def requests(self, n: int, offset: int) -> list[bytes]:
        return [
            upload_request(self.port, self.headers, pdfs.unique(offset + i), f"doc-{offset + i}.pdf")
            for i in range(n)
        ]

    def forget(self) -> None:
        """Drop what was measured so far (after a warm-up)."""
        self.rates.clear()
        self.p99s.clear()
        self.costs.clear()

    def accept_round(self, n: int, offset: int, concurrency: int) -> list[str]:
        """Post N unique one-page PDFs, record rate, p99 and CPU per upload; the workflow ids."""
        requests = self.requests(n, offset)
        before = cpu.snapshot({self.proc.pid})
        elapsed, replies = post_all(self.port, requests, concurrency)
        after = cpu.snapshot({self.proc.pid})
        ids = accepted(replies, n, self.name)
        self.rates.append(n / elapsed)
        self.p99s.append(statistics.quantiles([r.seconds * 1000 for r in replies], n=100)[98])
        self.costs.append(cpu.per_workflow_ms(before, after, n))
        self.clean()
        return ids


def start_dox_api(dox: Dox, workdir: Path, workers: int) -> Peer:
    key = subprocess.run(
        [sys.executable, "-m", "dox_tasks.cli", "apikeys", "create", "bench", "--user", "bench-api"]
        + ["--scope", "submit,read"],
        env=dox.env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    port, log = free_port(), workdir / "dox-api.log"
    proc = spawn(
        [sys.executable, "-m", "dox_tasks.cli", "api", "serve", "--port", str(port)]
        + ["--workers", str(workers)],
        dox.env,
        log,
    )
    wait_started(proc, log, workers, port)
    prefix = dox.env["DOX_BROKER_KEY_PREFIX"]
    headers = {"Authorization": f"Bearer {key}"}
    return Peer("dox", proc, port, headers, prefix, lambda: drop_queued(prefix))


def start_handwritten(workdir: Path, workers: int) -> Peer:
    prefix = f"bench-hand-{uuid.uuid4().hex[:6]}:"
    uploads = workdir / "handwritten-uploads"
    env = {
        **os.environ,
        "BENCH_REDIS_URL": REDIS_URL,
        "BENCH_PREFIX": prefix,
        "BENCH_UPLOAD_DIR": str(uploads),
    }
    port, log = free_port(), workdir / "handwritten.log"
    uvicorn = [sys.executable, "-m", "uvicorn", "handwritten_api:app", "--host", "127.0.0.1"]
    options = ["--workers", str(workers), "--http", "httptools", "--log-level", "info"]
    proc = spawn(
        [*uvicorn, "--port", str(port), *options, "--no-server-header", "--no-proxy-headers"],
        env,
        log,
        cwd=ROOT / "bench",
    )
    wait_started(proc, log, workers, port)

    def clean() -> None:
        drop_queued(prefix)
        for f in uploads.iterdir():
            f.unlink()

    return Peer("handwritten", proc, port, {}, prefix, clean)


# -- the figures -----------------------------------------------------------------------------
def compare_accept(dox: Peer, hand: Peer, n: int, rounds: int, concurrency: int) -> None:
    for k, peer in enumerate((dox, hand)):  # warm-up: every worker process imported and connected
        peer.accept_round(max(4 * concurrency, 50), 10**8 + k * 10**4, concurrency)
        peer.forget()
    speed = []
    for r in range(rounds):
        speed.append(cpu.calibration_ms())
        order = (dox, hand) if r % 2 == 0 else (hand, dox)
        for peer in order:
            peer.accept_round(n, (r + 1) * 10**5, concurrency)
            note(
                f"round {r + 1}: {peer.name} {peer.rates[-1]:.0f} uploads/s, p99 {peer.p99s[-1]:.0f} ms,"
                f" {peer.costs[-1]['total']:.1f} CPU ms/upload (calibration {speed[-1]:.0f} ms)"
            )
    say("calibration_loop_cpu_ms_rounds", " ".join(f"{x:.0f}" for x in speed))
    for peer, label in ((dox, "api"), (hand, "handwritten")):
        say(f"{label}_accept_per_s", f"{statistics.median(peer.rates):.0f}")
        say(f"{label}_accept_p99_ms", f"{statistics.median(peer.p99s):.0f}")
        for part in peer.costs[0]:
            name = "server" if part == "workers" else part
            value = statistics.median(c[part] for c in peer.costs)
            say(f"{label}_accept_cpu_ms_per_upload_{name}", f"{value:.2f}")
    ratios = [d / h for d, h in zip(dox.rates, hand.rates, strict=True)]
    say("api_accept_ratio_rounds", " ".join(f"{x:.2f}" for x in ratios))
    say("api_accept_ratio_vs_handwritten", f"{statistics.median(ratios):.2f}")
    # What the rate ratio becomes when the servers have the cores to themselves: on a busy
    # machine the rates follow the scheduler as much as the servers, the CPU each upload costs less so.
    cpu_ratios = [h["total"] / d["total"] for d, h in zip(dox.costs, hand.costs, strict=True)]
    say("api_accept_cpu_ratio_rounds", " ".join(f"{x:.2f}" for x in cpu_ratios))
    say("api_accept_cpu_ratio_vs_handwritten", f"{statistics.median(cpu_ratios):.2f}")


def high_water_kib(pid: int) -> dict[int, int]:
    """VmHWM (peak RSS) of a process and its descendants, by pid: a peak between two PSS
    samples still shows here."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                out[p] = next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:"))
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo.extend(int(c) for c in fh.read().split())
        except (OSError, StopIteration):
            pass
    return out


def upload_rss_growth(peer: Peer, big: Path) -> tuple[float, float]:
    """MiB the server's process tree grows by while one big upload is posted: the peak of its
    PSS (sampled every 20 ms) over the PSS before, and the largest growth of one process's VmHWM."""
    time.sleep(1)
    baseline, hwm = tree_rss_kib(peer.proc.pid), high_water_kib(peer.proc.pid)
    peak, done = baseline, threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_kib(peer.proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        reply = asyncio.run(_post_file(peer.port, peer.headers, big))
    finally:
        done.set()
        sampler.join()
    accepted([reply], 1, f"{peer.name} {big.stat().st_size} byte upload")
    note(f"{peer.name}: {big.stat().st_size / 2**20:.0f} MiB upload accepted in {reply.seconds:.1f} s")
    hwm_growth = max(v - hwm.get(p, v) for p, v in high_water_kib(peer.proc.pid).items())
    peer.clean()
    return (peak - baseline) / 1024, hwm_growth / 1024


def compare_end_to_end(dox: Dox, api: Peer, n: int, rounds: int, concurrency: int) -> None:
    def via_api(count: int, offset: int) -> float:
        requests = api.requests(count, offset)
        t0 = time.perf_counter()
        ids = accepted(post_all(api.port, requests, concurrency)[1], count, "dox end to end")
        rows = dox.wait(ids)
        elapsed = time.perf_counter() - t0
        dox.check(ids, rows, "success")
        return count / elapsed

    def via_submit(count: int, offset: int) -> float:
        docs = [pdfs.unique(offset + i) for i in range(count)]
        t0 = time.perf_counter()
        ids = [dox.submit(d) for d in docs]
        rows = dox.wait(ids)
        elapsed = time.perf_counter() - t0
        dox.check(ids, rows, "success")
        return count / elapsed

    runs: dict[str, Callable[[int, int], float]] = {"api": via_api, "submit": via_submit}
    via_api(10, 2 * 10**8)  # warm-up: worker pools up, connections open
    via_submit(10, 2 * 10**8 + 100)
    groups = {api.proc.pid, *(w.pid for w in dox.workers)}  # "workers": DOX's and the server's
    rates: dict[str, list[float]] = {"api": [], "submit": []}
    costs: dict[str, list[float]] = {"api": [], "submit": []}
    for r in range(rounds):
        order = ("api", "submit") if r % 2 == 0 else ("submit", "api")
        for k, name in enumerate(order):
            before = cpu.snapshot(groups)
            rates[name].append(runs[name](n, 3 * 10**8 + r * 10**5 + k * 10**4))
            costs[name].append(cpu.per_workflow_ms(before, cpu.snapshot(groups), n)["total"])
            note(
                f"end to end round {r + 1}: {name} {rates[name][-1]:.1f} docs/s,"
                f" {costs[name][-1]:.0f} CPU ms/document"
            )
    for name in ("api", "submit"):
        say(f"{name}_end_to_end_cpu_ms_per_doc", f"{statistics.median(costs[name]):.1f}")
    say("api_end_to_end_docs_per_s", f"{statistics.median(rates['api']):.1f}")
    say("submit_end_to_end_docs_per_s", f"{statistics.median(rates['submit']):.1f}")
    ratios = [a / s for a, s in zip(rates["api"], rates["submit"], strict=True)]
    say("api_end_to_end_ratio_rounds", " ".join(f"{x:.2f}" for x in ratios))
    say("api_end_to_end_ratio_vs_submit", f"{statistics.median(ratios):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=400, help="uploads per accept run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved accept rounds")
    parser.add_argument("--e2e-n", type=int, default=100, help="documents per end-to-end run")
    parser.add_argument("--e2e-rounds", type=int, default=3, help="interleaved end-to-end rounds")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--workers", type=int, default=CORES, help="server processes of both servers")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (under 2 minutes)")
    args = parser.parse_args()
    if args.quick:
        args.n, args.rounds, args.e2e_n, args.e2e_rounds = 100, 2, 20, 1
    workdir = Path(tempfile.mkdtemp(prefix="dox-bench-api-"))
    clamd = None
    clamd_url = os.environ.get("DOX_CLAMD_URL")
    if not clamd_url:
        clamd = Clamd(workdir / "clamd")
        clamd.start()
        clamd_url = clamd.url
    say("machine", f"{CORES} cores, Python {sys.version.split()[0]}")
    say(
        "settings",
        f"{args.clients} clients, {args.workers} server workers, N={args.n} x {args.rounds} rounds",
    )
    servers: list[Peer] = []
    dox = Dox(
        workdir,
        clamd_url,
        DOX_API_RATE_PER_MIN="0",
        RATE_LIMIT_PER_USER_PER_DAY=str(10**9),
        MAX_FILE_SIZE_MB=str(BIG_MIB + 14),
        API_KEY=secrets.token_hex(32),
    )
    try:
        api = start_dox_api(dox, workdir, args.workers)
        hand = start_handwritten(workdir, args.workers)
        servers = [api, hand]
        note(f"accept: {args.rounds} interleaved rounds of N={args.n}, {args.clients} clients")
        compare_accept(api, hand, args.n, args.rounds, args.clients)
        big = workdir / "big.pdf"
        make_big_pdf(big, BIG_MIB)
        for peer, label in ((api, "api"), (hand, "handwritten")):
            pss, hwm = upload_rss_growth(peer, big)
            say(f"{label}_upload_rss_growth_mib_{BIG_MIB}mib", f"{pss:.1f}")
            say(f"{label}_upload_vmhwm_growth_mib_{BIG_MIB}mib", f"{hwm:.1f}")
        big.unlink()
        stop(hand.proc)
        note(f"end to end: {args.e2e_rounds} interleaved rounds of N={args.e2e_n} one-page PDFs")
        dox.start_workers()
        compare_end_to_end(dox, api, args.e2e_n, args.e2e_rounds, args.clients)
    finally:
        for s in servers:
            stop(s.proc)
        if len(servers) > 1:
            pipeline._drop_keys(servers[1].prefix)  # the peer's; DOX's go with its namespace below
        dox.close()
        if clamd:
            clamd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
