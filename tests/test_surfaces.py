"""The HTTP surfaces and the terminal (issue 10, section 6).

* the metrics server bounds connections in time and number, against a real process;
* `dox metrics serve`, the worker's metrics port and `dox flower` listen on 127.0.0.1
  unless told otherwise;
* Flower credentials Flower would misread are refused before it starts;
* user text (names, file names, reasons) reaches the terminal as text: no markup, no
  escape sequences.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pdfs
import pytest
from services import clean_env, dox, free_port, http_get, kill_group, server_env, spawn_dox

AUTH = ("prom", "scrape-secret")


def listening(port: int) -> set[str]:
    """The local addresses something listens on at ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                if len(addr) == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
                else:
                    raw = b"".join(bytes.fromhex(addr[i : i + 8])[::-1] for i in range(0, 32, 8))
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


def wait_listening(port: int, log: Path, timeout: float = 60) -> set[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = listening(port)
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}:\n{log.read_text()[-3000:]}")


def threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


def closed(sock: socket.socket) -> bool:
    """True once the server has closed this connection (EOF or reset; a 503 first is fine)."""
    sock.settimeout(0.2)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except TimeoutError:
        return False
    except OSError:
        return True


# -- the metrics server ---------------------------------------------------------------------
@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.integration
def test_metrics_server_survives_half_sent_requests_and_closes_them(tmp_path, stack, harness_factory):
    harness_factory(stack)  # the tables the exporter reads
    port = free_port()
    env = server_env(
        tmp_path,
        stack,
        DOX_METRICS_USER=AUTH[0],
        DOX_METRICS_PASSWORD=AUTH[1],
        DOX_METRICS_TIMEOUT="2",
        DOX_METRICS_MAX_CONNECTIONS="16",
    )
    log = tmp_path / "exporter.log"
    proc = spawn_dox(["metrics", "serve", "--port", str(port), "--address", "127.0.0.1"], env, log)
    held: list[socket.socket] = []
    try:
        wait_listening(port, log)
        url = f"http://127.0.0.1:{port}/metrics"
        assert http_get(url, AUTH)[0] == 200
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", port), 5)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic ")  # never finished
            held.append(s)
        time.sleep(0.3)
        assert threads(proc.pid) <= 16 + 8, "a thread per idle connection again"
        started = time.monotonic()
        status, body = http_get(url, AUTH, timeout=10)
        assert status == 200 and b"dox_workflows" in body  # a real scrape still gets through
        assert time.monotonic() - started < 5
        time.sleep(2 + 1.5)  # the request timeout, and the watchdog's tick
        still_open = [s for s in held if not closed(s)]
        assert still_open == [], f"{len(still_open)} half-sent connections still open after the timeout"
        assert http_get(url, AUTH)[0] == 200
        assert threads(proc.pid) <= 8
    finally:
        for s in held:
            s.close()
        kill_group(proc)


@pytest.mark.postgres
@pytest.mark.integration
def test_metrics_serve_listens_on_loopback_unless_told(tmp_path, pg_url):
    for args, expected in (([], {"127.0.0.1"}), (["--address", "0.0.0.0"], {"0.0.0.0"})):  # noqa: S104
        port = free_port()
        env = clean_env(
            tmp_path, DOX_DATABASE_URL=pg_url, DOX_METRICS_USER=AUTH[0], DOX_METRICS_PASSWORD=AUTH[1]
        )
        log = tmp_path / f"exporter-{port}.log"
        proc = spawn_dox(["metrics", "serve", "--port", str(port), *args], env, log)
        try:
            assert wait_listening(port, log) == expected
        finally:
            kill_group(proc)


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.integration
def test_worker_metrics_port_listens_on_loopback_unless_told(tmp_path, stack, harness_factory):
    harness_factory(stack)
    for host, expected in ((None, {"127.0.0.1"}), ("0.0.0.0", {"0.0.0.0"})):  # noqa: S104 - the compose case
        port = free_port()
        extra = {"DOX_METRICS_HOST": host} if host else {}
        env = server_env(
            tmp_path,
            stack,
            DOX_METRICS_USER=AUTH[0],
            DOX_METRICS_PASSWORD=AUTH[1],
            DOX_METRICS_PORT=str(port),
            **extra,
        )
        log = tmp_path / f"worker-{port}.log"
        proc = spawn_dox(["worker", "-Q", "operations", "-P", "solo", "-n", f"m{port}@test"], env, log)
        try:
            assert wait_listening(port, log) == expected
        finally:
            kill_group(proc)


# -- Flower ---------------------------------------------------------------------------------
def _flower(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str] | None:
    """Run `dox flower`; None if it was still running after 15 s (it started: not refused)."""
    try:
        return subprocess.run(
            [sys.executable, "-m", "dox_tasks.cli", "flower", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize(
    ("user", "password", "why"),
    [
        ("ops", "pa,ss", "DOX_FLOWER_PASSWORD contains a comma"),
        ("ops,admin", "s3cret", "DOX_FLOWER_USER contains a comma"),
        ("o:ps", "s3cret", "DOX_FLOWER_USER contains a colon"),
        ("ops", "pässwörd", "DOX_FLOWER_PASSWORD must be printable ASCII"),
        ("öps", "s3cret", "DOX_FLOWER_USER must be printable ASCII"),
    ],
)
def test_flower_refuses_credentials_it_would_misread(tmp_path, user, password, why):
    port = free_port()
    env = clean_env(tmp_path, DOX_FLOWER_USER=user, DOX_FLOWER_PASSWORD=password)
    done = _flower(env, tmp_path, f"--port={port}")
    assert done is not None, "Flower started with credentials it splits on commas / colons"
    assert done.returncode == 2 and why in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and password not in done.stderr


def test_flower_credentials_that_work_are_passed_through():
    from dox_tasks.cli.monitoring import flower_basic_auth

    assert flower_basic_auth("ops", "s3cret-pw_!") == "ops:s3cret-pw_!"
    assert flower_basic_auth("ops", "pa:ss") == "ops:pa:ss"  # a colon in the password is fine


@pytest.mark.redis
@pytest.mark.integration
def test_flower_listens_on_loopback_unless_told(tmp_path, stack, harness_factory):
    harness_factory(stack)
    port = free_port()
    env = server_env(tmp_path, stack, DOX_FLOWER_USER="ops", DOX_FLOWER_PASSWORD="s3cret-pw")
    log = tmp_path / "flower.log"
    proc = spawn_dox(["flower", f"--port={port}"], env, log)
    try:
        assert wait_listening(port, log) == {"127.0.0.1"}
    finally:
        kill_group(proc)


# -- the terminal ---------------------------------------------------------------------------
HOSTILE_NAME = "[/]inv\x1b[31mred\x9b2J.pdf"


def _clean(text: str) -> None:
    assert "\x1b" not in text and "\x9b" not in text, repr(text)
    assert "Traceback" not in text and "MarkupError" not in text and "internal error" not in text


@pytest.mark.redis
@pytest.mark.postgres
@pytest.mark.clamd
@pytest.mark.integration
def test_user_text_reaches_the_terminal_as_text(tmp_path, stack, harness_factory):
    h = harness_factory(stack)
    h.worker()
    wid = h.submit(pdfs.unique(960), user="[/]", file_name=HOSTILE_NAME)
    h.wait([wid])
    env = {**server_env(tmp_path, stack), "COLUMNS": "250"}
    for args in (["status", wid], ["workflows", "list"], ["workflows", "show", wid]):
        done = dox(args, env, tmp_path)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        _clean(done.stdout + done.stderr)
        assert "\\x1b[31m" in done.stdout, (args, done.stdout)  # shown, visibly, not obeyed
        assert "[/]inv" in done.stdout
    paused = dox(
        ["intake", "pause", "--actor", "[/]", "--reason", "db \x1b[2Jmigration [bold]"], env, tmp_path
    )
    assert paused.returncode == 0, paused.stderr
    status = dox(["intake", "status"], env, tmp_path)
    assert status.returncode == 0, status.stderr
    _clean(status.stdout)
    assert "by [/]: db \\x1b[2Jmigration [bold]" in status.stdout
    assert json.loads(dox(["status", wid, "--json"], env, tmp_path).stdout)["file"] == HOSTILE_NAME


def test_file_names_in_the_run_table_are_shown_not_obeyed(tmp_path):
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "[bold]a\x1b]0;pwned\x07.pdf").write_bytes(pdfs.unique(961))
    (inbox / ":cross_mark: ok\u2028.pdf").write_bytes(pdfs.unique(962))
    done = dox(["run", str(inbox)], {**clean_env(tmp_path), "COLUMNS": "250"}, tmp_path)
    assert done.returncode == 0, (done.stdout, done.stderr)
    _clean(done.stdout + done.stderr)
    assert "\x07" not in done.stdout and "[bold]a\\x1b]0;pwned\\x07.pdf" in done.stdout
    # rich's emoji codes stay text; a line separator is shown, not obeyed
    assert "\u274c" not in done.stdout and ":cross_mark: ok\\u2028.pdf" in done.stdout


def test_safe_text():
    from dox_tasks.terminal import safe

    assert safe("[/]") == "\\[/]"
    assert safe("[/]", markup=False) == "[/]"
    assert safe("a\x1b[31mb\x9b\x00\x7f\u202e") == "a\\x1b[31mb\\x9b\\x00\\x7f\\u202e"
    assert safe("two\nlines", markup=False) == "two\\x0alines"
    assert safe("two\nlines\r", markup=False, newlines=True) == "two\nlines\\x0d"
    assert safe(None) == "" and safe(3) == "3" and safe("josé ｂ") == "josé ｂ"
    # invisible characters outside the C0/C1 ranges: separators, fillers, tags, selectors
    assert safe("a\u2028b\u3164c\U000e0041d\ufe0fe", markup=False) == "a\\u2028b\\u3164c\\U000e0041d\\ufe0fe"
