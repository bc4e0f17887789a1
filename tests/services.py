"""Reaching the real services tests need; skip on a laptop without them, FAIL in CI.

With ``CI=true`` a missing service is a failure, never a skip: a green CI run
must mean the integration tests really ran.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import closing, suppress
from pathlib import Path
from typing import Any

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get("DOX_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DOX_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parent.parent


def unavailable(service: str, why: str) -> None:
    import pytest

    message = f"{service} unavailable: {why}"
    if CI:
        pytest.fail(f"{message} (CI=true: service tests must not skip)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    with closing(socket.socket()) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_ok() -> str | None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        return None
    except Exception as exc:  # noqa: BLE001
        return str(exc)


def create_database(admin_url: str = PG_ADMIN_URL, prefix: str = "dox_t") -> str:
    """A fresh PostgreSQL database for one test (or one benchmark run); returns its URL."""
    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        conn = psycopg2.connect(admin_url, connect_timeout=3)
    except Exception as exc:  # noqa: BLE001
        unavailable("PostgreSQL", str(exc).strip())
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str, admin_url: str = PG_ADMIN_URL) -> None:
    import psycopg2

    name = url.rsplit("/", 1)[1]
    conn = psycopg2.connect(admin_url, connect_timeout=3)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def write_signature_db(folder: Path) -> None:
    """The offline test signature: EICAR anywhere in a file (named Dox.Test.EICAR)."""
    from pdfs import EICAR

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dox-test.ndb").write_text(f"Dox.Test.EICAR-body:0:*:{EICAR.hex()}\n")


class Clamd:
    """A clamd of the tests' own: DOX's shipped clamd.conf, an offline test signature DB."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_conf: list[str] = []  # e.g. raised limits for a benchmark

    def start(self) -> None:
        binary = shutil.which("clamd") or ("/usr/sbin/clamd" if Path("/usr/sbin/clamd").exists() else None)
        if binary is None:
            unavailable("clamd", "not installed (apt-get install clamav-daemon)")
        db = self.workdir / "db"
        write_signature_db(db)
        conf = []
        for line in (ROOT / "deploy" / "clamd.conf").read_text().splitlines():
            key = line.split(" ", 1)[0]
            overridden = {c.split(" ", 1)[0] for c in self.extra_conf}
            if key in ("TCPSocket", "TCPAddr", "DatabaseDirectory", "LogFile", "User") or (key in overridden):
                continue
            conf.append(line)
        conf += [
            f"TCPSocket {self.port}",
            "TCPAddr 127.0.0.1",
            f"DatabaseDirectory {db}",
            f"LogFile {self.workdir / 'clamd.log'}",
            f"PidFile {self.workdir / 'clamd.pid'}",
            *self.extra_conf,
        ]
        if os.geteuid() == 0:
            conf.append("User root")
        (self.workdir / "clamd.conf").write_text("\n".join(conf) + "\n")
        errlog = self.workdir / "clamd.stderr"
        with errlog.open("wb") as err:  # a file, not a pipe: clamd may outlive this process
            self.proc = subprocess.Popen(
                [binary, "-c", str(self.workdir / "clamd.conf")],
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = errlog.read_text(errors="replace")
                unavailable("clamd", f"exited with {self.proc.returncode}: {err[-500:]}")
            if self.ping():
                return
            time.sleep(0.2)
        unavailable("clamd", "did not answer PING within 90 s")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


if __name__ == "__main__":
    # `python tests/services.py clamd DIR`: start a test clamd that outlives this
    # command (used by .ci/run) and print its URL.
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if len(sys.argv) != 3 or sys.argv[1] != "clamd":
        sys.exit("usage: services.py clamd DIR")
    daemon = Clamd(Path(sys.argv[2]).resolve())
    daemon.start()
    print(daemon.url)


class TcpProxy:
    """A loopback TCP proxy a test can cut and restore (never stop the shared servers)."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        import threading

        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self._accepting = False

    def start(self) -> TcpProxy:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._accepting = True
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while self._accepting:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Refuse new connections and break every open one."""
        self._accepting = False
        if self._listener:
            # shutdown() wakes the thread blocked in accept(); close() alone would not (Linux)
            with suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
                c.close()
            except OSError:
                pass

    def restore(self) -> None:
        self.start()


# -- `dox` as a subprocess ---------------------------------------------------------
def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DOX_", "CLAMAV_", "MAX_FILE", "WORKFLOW_", "RATE_LIMIT"))
    }
    env["DOX_HOME"] = str(tmp_path / "home")
    env.update(extra)
    return env


def server_env(tmp_path: Path, settings: Any, **extra: str) -> dict[str, str]:
    """The environment of a `dox` command pointed at a test's Redis, Postgres and clamd."""
    return clean_env(
        tmp_path,
        DOX_BROKER_URL=settings.broker_url,
        DOX_DATABASE_URL=settings.database_url,
        DOX_CLAMD_URL=settings.clamd_url,
        DOX_NAMESPACE=settings.namespace,
        DOX_BROKER_KEY_PREFIX=settings.broker_key_prefix,
        **extra,
    )


def basic_auth(user: str, password: str) -> str:
    """An HTTP ``Authorization`` header value for basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def http_get(url: str, auth: tuple[str, str] | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are answers, not exceptions (OSError if nothing listens)."""
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", basic_auth(*auth))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def dox(
    args: list[str], env: dict[str, str], cwd: Path, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dox_tasks.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
        input=input,
    )


class RedisServer:
    """A private redis-server on a free port, for tests that flush or restart it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            unavailable("redis-server", "not installed (Debian: apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(exe), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with suppress(Exception):
                redis.Redis.from_url(self.url, socket_connect_timeout=0.5).ping()
                return self
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def flushall(self) -> None:
        import redis

        redis.Redis.from_url(self.url).flushall()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


def spawn_dox(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A long-running `dox` process (worker, beat) in its own session, output to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "dox_tasks.cli", *args],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(30)


def expect_of(h: Any, workflow_id: str) -> tuple[str, int]:
    """The (definition hash, run) a genuine step message of this workflow names."""
    wf = h.rt.state.get_workflow(workflow_id)
    return wf["definition_hash"], wf["run"]


def assert_expected_results(stdout: str, expected_file: Path) -> dict[str, Any]:
    """``dox run --json`` output against examples/inbox/EXPECTED.json: every file once, its
    status, and its reason, template and original where EXPECTED names them."""
    import json

    expected = json.loads(expected_file.read_text())
    results = {Path(r["file"]).name: r for r in map(json.loads, stdout.splitlines())}
    assert set(results) == set(expected)
    for name, want in expected.items():
        got = results[name]
        assert got["status"] == want["status"], (name, got)
        for key in ("reason", "template"):
            if key in want:
                assert got[key] == want[key], (name, got)
        if "duplicate_of" in want:
            assert got["duplicate_of"] == results[want["duplicate_of"]]["workflow_id"]
    return results
