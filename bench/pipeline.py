"""DOX pipeline benchmark: `python bench/pipeline.py` (no arguments needed).

Runs against the Redis, PostgreSQL and clamd named in the environment (defaults on
127.0.0.1; without DOX_CLAMD_URL it starts a clamd from deploy/clamd.conf with the
tests' offline signature DB). DOX runs as shipped, with the worker layout of
docker-compose.yml (`dox worker -Q validation,storage,recognition,events -c 10` and
`dox worker -Q scan -c 4`). Prints one `name: value` line per figure and checks its
own work (N×5 step rows, N terminal workflows, N completion events).

For both throughput runs it also prints the CPU spent per workflow by each part of the
system (`*_cpu_ms_per_workflow_{workers,postgres,redis,client,total}`, from /proc over
the timed run; see bench/cpu.py): on a 2-core machine that is what bounds throughput.
A second baseline, `celery_layout_*`, runs DOX's Celery settings and worker layout with
no-op tasks and nothing of DOX (bench/celery_layout.py): what Celery costs before DOX
records anything.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples"), str(ROOT / "bench")]

REDIS_URL = os.environ.get("DOX_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_ADMIN = os.environ.get("DOX_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CORES = os.cpu_count() or 2

import cpu  # noqa: E402 - bench/ is on sys.path from here on


def say(name: str, value: object) -> None:
    print(f"{name}: {value}", flush=True)


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


# -- process helpers ------------------------------------------------------------------
def spawn(args: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args,
        env=env,
        cwd=cwd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tree_rss_kib(pid: int) -> int:
    """Memory of a process and all its descendants (Linux /proc), in KiB.

    Uses PSS (proportional set size): a forked child shares its parent's pages, and
    summing plain RSS would count those pages twice.
    """
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


# -- the systems compared ---------------------------------------------------------------
@dataclass
class System:
    """One contender in the throughput comparison: ``run(count, offset)`` -> seconds."""

    name: str
    run: Callable[[int, int], float]
    groups: set[int]  # process groups of its workers (CPU accounting)


def measure(system: System, n: int, offset: int) -> tuple[float, dict[str, float]]:
    """Workflows/s and CPU ms per workflow by component for one timed run of N."""
    before = cpu.snapshot(system.groups)
    elapsed = system.run(n, offset)
    return n / elapsed, cpu.per_workflow_ms(before, cpu.snapshot(system.groups), n)


def _drop_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


@contextmanager
def bare_celery_system(workdir: Path) -> Iterator[System]:
    """The baseline: five no-op tasks chained as a user writes them (bench/bare_celery.py)."""
    from celery import chain

    prefix = f"bench-bare-{uuid.uuid4().hex[:6]}:"
    env = {**os.environ, "BENCH_REDIS_URL": REDIS_URL, "BENCH_PREFIX": prefix}
    os.environ.update(BENCH_REDIS_URL=REDIS_URL, BENCH_PREFIX=prefix)
    import bare_celery

    celery = [sys.executable, "-m", "celery", "-A", "bare_celery", "worker", "--loglevel=WARNING"]
    worker = spawn(
        [*celery, "-P", "prefork", "-c", str(CORES)], env, workdir / "bare.log", cwd=ROOT / "bench"
    )
    step = bare_celery.step

    def run(count: int, offset: int) -> float:
        t0 = time.perf_counter()
        results = [
            chain(step.s(offset + i), step.s(), step.s(), step.s(), step.s()).apply_async()
            for i in range(count)
        ]
        for r in results:
            r.get(timeout=300)
        return time.perf_counter() - t0

    try:
        yield System("bare_celery", run, {worker.pid})
    finally:
        stop(worker)
        _drop_keys(prefix)


@contextmanager
def celery_layout_system(workdir: Path) -> Iterator[System]:
    """DOX's Celery settings and worker layout with no-op tasks (bench/celery_layout.py)."""
    from celery import chain

    prefix = f"bench-layout-{uuid.uuid4().hex[:6]}:"
    env = {**os.environ, "BENCH_REDIS_URL": REDIS_URL, "BENCH_PREFIX": prefix}
    os.environ.update(BENCH_REDIS_URL=REDIS_URL, BENCH_PREFIX=prefix)
    import celery_layout as layout

    celery = [sys.executable, "-m", "celery", "-A", "celery_layout", "worker", "--loglevel=WARNING"]
    main_queues = "validation,storage,recognition,events"
    workers = [
        spawn(
            [*celery, "-Q", main_queues, "-c", "10", "-n", f"main-{prefix}@%h"],
            env,
            workdir / "layout-main.log",
            cwd=ROOT / "bench",
        ),
        spawn(
            [*celery, "-Q", "scan", "-c", "4", "-n", f"scan-{prefix}@%h"],
            env,
            workdir / "layout-scan.log",
            cwd=ROOT / "bench",
        ),
    ]
    queues = ["validation", "scan", "storage", "recognition"]

    def run(count: int, offset: int) -> float:
        layout.counter.set(layout.DONE, 0)
        t0 = time.perf_counter()
        for i in range(offset, offset + count):
            steps = [layout.step.si(i).set(queue=q) for q in queues]
            chain(*steps, layout.last.si(i).set(queue="events")).apply_async()
        deadline = time.monotonic() + 300
        while int(layout.counter.get(layout.DONE) or 0) < count:
            if time.monotonic() > deadline:
                raise RuntimeError("celery layout baseline: chains did not finish in 300 s")
            time.sleep(0.01)
        return time.perf_counter() - t0

    try:
        yield System("celery_layout", run, {w.pid for w in workers})
    finally:
        for w in workers:
            stop(w)
        _drop_keys(prefix)


# -- DOX ---------------------------------------------------------------------------------
class Dox:
    """DOX configured like docker-compose.yml, on a fresh database."""

    def __init__(self, workdir: Path, clamd_url: str, **extra_env: str):
        self.workdir = workdir
        import services

        self.db_url = services.create_database(PG_ADMIN, prefix="dox_bench")
        ns = f"bench{uuid.uuid4().hex[:6]}"
        defs = workdir / "defs"
        if not defs.exists():
            shutil.copytree(ROOT / "workflow_defs", defs)
            shutil.copy(ROOT / "bench" / "defs" / "bench_noop.yaml", defs)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DOX_")}
        self.env.update(
            {
                "DOX_BROKER_URL": REDIS_URL,
                "DOX_DATABASE_URL": self.db_url,
                "DOX_CLAMD_URL": clamd_url,
                "DOX_HOME": str(workdir / "home"),
                "DOX_NAMESPACE": ns,
                "DOX_BROKER_KEY_PREFIX": f"{ns}-broker:",
                "DOX_DEFS_DIR": str(defs),
                "RATE_LIMIT_PER_USER_PER_DAY": "0",
                **extra_env,
            }
        )
        os.environ.update(self.env)
        from dox_tasks.app import app
        from dox_tasks.celery_app import reconfigure
        from dox_tasks.settings import Settings

        reconfigure(app, Settings())
        from dox_tasks import runtime

        self.rt = runtime.get()
        self.rt.state.migrate()
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_workers(self) -> None:
        conc = self.env.get("WORKFLOW_CONCURRENCY", "10")
        scan_conc = self.env.get("SCAN_CONCURRENCY", "4")
        dox = [sys.executable, "-m", "dox_tasks.cli", "worker", "--loglevel=WARNING"]
        self.workers = [
            spawn(
                [
                    *dox,
                    "-Q",
                    "validation,storage,recognition,events",
                    "-c",
                    conc,
                    "-n",
                    f"main-{uuid.uuid4().hex[:4]}@%h",
                ],
                self.env,
                self.workdir / "main.log",
            ),
            spawn(
                [*dox, "-Q", "scan", "-c", scan_conc, "-n", f"scan-{uuid.uuid4().hex[:4]}@%h"],
                self.env,
                self.workdir / "scan.log",
            ),
        ]

    def stop_workers(self) -> None:
        for w in self.workers:
            stop(w)

    def submit(self, data: bytes, workflow: str = "process_document_upload") -> str:
        from dox_tasks import submit

        return submit(data, user="bench", workflow=workflow, file_name="bench.pdf")

    def wait(self, ids: list[str], timeout: float = 600) -> dict[str, dict[str, Any]]:
        from dox_tasks.embedded import wait_for

        return wait_for(self.rt.state, ids, timeout)

    def check(self, ids: list[str], rows: dict[str, dict[str, Any]], want: str) -> None:
        from sqlalchemy import bindparam, text

        assert len(rows) == len(ids) and all(r["current_state"] == want for r in rows.values()), {
            r["current_state"] for r in rows.values()
        }
        with self.rt.state.engine.connect() as c:
            steps = c.execute(
                text(
                    "select count(*) from workflow_step_results where state='success' and workflow_id in :ids"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": ids},
            ).scalar()
            events = c.execute(
                text(
                    "select count(*) from workflow_events where type = :t and workflow_id in :ids"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": ids, "t": f"workflow.{want}"},
            ).scalar()
        assert steps == 5 * len(ids), f"{steps} step rows for {len(ids)} workflows"
        assert events == len(ids), f"{events} completion events for {len(ids)} workflows"

    def close(self) -> None:
        self.stop_workers()
        from dox_tasks import runtime

        runtime.get().close()
        import services

        services.drop_database(self.db_url, PG_ADMIN)


def dox_noop_system(dox: Dox) -> System:
    """DOX as shipped running ``bench_noop`` (the five queues, no-op step bodies)."""

    def run(count: int, offset: int) -> float:
        t0 = time.perf_counter()
        ids = [dox.submit(f"noop {offset + i}".encode(), "bench_noop") for i in range(count)]
        rows = dox.wait(ids)
        elapsed = time.perf_counter() - t0
        dox.check(ids, rows, "success")
        return elapsed

    return System("dox_noop", run, {w.pid for w in dox.workers})


def compare_throughput(systems: list[System], n: int, rounds: int) -> None:
    """Interleaved rounds (each system once per round, same N): the machine's speed drifts
    between minutes, so each round's ratio compares runs made moments apart; the medians
    are printed, and every round's ratio to the baseline as well."""
    for k, system in enumerate(systems):
        system.run(20, 10**7 + k * 100)  # warm-up: worker processes up, connections open
    rates: dict[str, list[float]] = {s.name: [] for s in systems}
    costs: dict[str, list[dict[str, float]]] = {s.name: [] for s in systems}
    speed: list[float] = []
    for r in range(rounds):
        speed.append(cpu.calibration_ms())
        note(f"round {r + 1}: calibration loop {speed[-1]:.0f} CPU ms")
        for system in systems:
            rate, parts = measure(system, n, offset=(r + 1) * 10**5)
            rates[system.name].append(rate)
            costs[system.name].append(parts)
            note(f"round {r + 1}: {system.name} {rate:.1f} workflows/s, {parts['total']:.1f} CPU ms/workflow")
    say("calibration_loop_cpu_ms_rounds", " ".join(f"{x:.0f}" for x in speed))
    base = systems[0].name
    for system in systems:
        say(f"{system.name}_workflows_per_s", f"{statistics.median(rates[system.name]):.1f}")
        for part in costs[system.name][0]:
            value = statistics.median(c[part] for c in costs[system.name])
            say(f"{system.name}_cpu_ms_per_workflow_{part}", f"{value:.1f}")
    ratios = [d / b for d, b in zip(rates["dox_noop"], rates[base], strict=True)]
    say("orchestration_ratio_rounds", " ".join(f"{x:.2f}" for x in ratios))
    say("orchestration_ratio_vs_bare_celery", f"{statistics.median(ratios):.2f}")


def bench_real(dox: Dox, n: int) -> float:
    import pdfs

    docs = [pdfs.unique(10**5 + i) for i in range(n + 20)]
    for d in docs[:20]:
        dox.wait([dox.submit(d)])
    t0 = time.perf_counter()
    ids = [dox.submit(d) for d in docs[20:]]
    rows = dox.wait(ids)
    elapsed = time.perf_counter() - t0
    dox.check(ids, rows, "success")
    return n / elapsed


def bench_latency(dox: Dox, rate: float, seconds: float) -> list[float]:
    import pdfs

    from dox_tasks.db.store import aware

    ids = []
    t0 = time.perf_counter()
    count = int(rate * seconds)
    for i in range(count):
        target = t0 + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ids.append(dox.submit(pdfs.unique(10**6 + i)))
    rows = dox.wait(ids)
    dox.check(ids, rows, "success")
    return sorted(
        (aware(r["finished_at"]) - aware(r["created_at"])).total_seconds() * 1000 for r in rows.values()
    )


def make_big_pdf(path: Path, size_mib: int) -> None:
    """A valid PDF of about size_mib MiB: pages whose content streams hold ~1 MiB each."""
    from pdfgen import content_stream

    pages = size_mib
    filler = b"% " + b"x" * (1024 * 1024 - 3) + b"\n"
    with path.open("wb") as out:
        out.write(b"%PDF-1.4\n")
        offsets = []

        def obj(num: int, body: bytes) -> None:
            offsets.append((num, out.tell()))
            out.write(b"%d 0 obj\n" % num + body + b"\nendobj\n")

        kids = b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(pages))
        obj(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        obj(2, b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % pages)
        obj(3, b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
        for i in range(pages):
            obj(
                4 + 2 * i,
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents"
                b" %d 0 R /Resources << /Font << /F1 3 0 R >> >> >>" % (5 + 2 * i),
            )
            data = content_stream([f"Page {i + 1} of a large document"]) + b"\n" + filler
            obj(5 + 2 * i, b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream")
        xref = out.tell()
        offsets.sort()
        out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1))
        for _, off in offsets:
            out.write(b"%010d 00000 n \n" % off)
        out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(offsets) + 1, xref))


def bench_big_file(workdir: Path, clamd_url: str, size_mib: int) -> tuple[float, str, float]:
    big = workdir / "big.pdf"
    make_big_pdf(big, size_mib)
    dox = Dox(
        workdir,
        clamd_url,
        MAX_FILE_SIZE_MB=str(size_mib + 64),
        WORKFLOW_TIMEOUT="900",
        DOX_PARSER_CPU_S="600",
        DOX_VISIBILITY_TIMEOUT="3600",
    )
    try:
        dox.start_workers()
        time.sleep(5)  # let the pools settle before the baseline sample
        pids = [w.pid for w in dox.workers]
        baseline = sum(tree_rss_kib(p) for p in pids)
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, sum(tree_rss_kib(p) for p in pids))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()
        from dox_tasks import submit

        wid = submit(big, user="bench")
        row = dox.wait([wid], timeout=1800)[wid]
        elapsed = time.perf_counter() - t0
        done.set()
        sampler.join()
        return (peak - baseline) / 1024, f"{row['current_state']}/{row['reason']}", elapsed
    finally:
        dox.close()
        big.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=300, help="workflows per throughput run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds")
    parser.add_argument("--rate", type=float, default=10.0, help="docs/s for the latency run")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the latency run")
    parser.add_argument("--big-mib", type=int, default=1024, help="size of the big file (0: skip)")
    parser.add_argument("--big-only", action="store_true", help="only the big-file run")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dox-bench-"))
    clamd = None
    clamd_url = os.environ.get("DOX_CLAMD_URL")
    if not clamd_url:
        import services

        clamd = services.Clamd(workdir / "clamd")
        # Raised so the big file can be scanned whole (clamd's ceiling is 4000M); the
        # shipped limits themselves are exercised by the test suite.
        clamd.extra_conf = ["StreamMaxLength 4000M", "MaxFileSize 4000M", "MaxScanSize 4000M"]
        clamd.start()
        clamd_url = clamd.url
    say("machine", f"{CORES} cores, Python {sys.version.split()[0]}")
    try:
        if not args.big_only:
            dox = Dox(workdir, clamd_url)
            try:
                dox.start_workers()
                note(
                    f"throughput, {args.rounds} interleaved rounds of N={args.n}: bare Celery chain"
                    f" (prefork -c {CORES}), DOX's Celery layout with no-op tasks, DOX bench_noop"
                )
                with bare_celery_system(workdir) as bare, celery_layout_system(workdir) as layout:
                    compare_throughput([bare, layout, dox_noop_system(dox)], args.n, args.rounds)
                note("real one-page PDFs through all five steps with clamd")
                say("real_docs_per_s", f"{bench_real(dox, args.n):.1f}")
                note(f"latency at {args.rate} docs/s for {args.seconds}s")
                lat = bench_latency(dox, args.rate, args.seconds)
                q = statistics.quantiles(lat, n=100)
                say("latency_ms_p50", f"{q[49]:.0f}")
                say("latency_ms_p95", f"{q[94]:.0f}")
                say("latency_ms_p99", f"{q[98]:.0f}")
            finally:
                dox.close()
        if args.big_mib:
            note(f"{args.big_mib} MiB PDF through validate, scan, store")
            growth, outcome, elapsed = bench_big_file(workdir, clamd_url, args.big_mib)
            say("big_file_outcome", outcome)
            say("big_file_seconds", f"{elapsed:.1f}")
            say(
                f"rss_growth_mib_{args.big_mib // 1024}gib_file"
                if args.big_mib >= 1024
                else f"rss_growth_mib_{args.big_mib}mib_file",
                f"{growth:.0f}",
            )
    finally:
        if clamd:
            clamd.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
