"""Uploads through the HTTP API: a real `dox api serve` process, PostgreSQL, Redis, clamd and a
real worker (the `dox` fixture) for the workflows that must finish.

Multipart and raw bodies ending `success`; 413 at the limit + 1 byte with nothing staged; a
50 MiB upload within 32 MiB of the server's memory; one workflow for 20 concurrent uploads
with one idempotency key (another user's same key: another); `?wait=`; a paused intake; bad
input (broken multipart, no file part, bad metadata, a path in the file name, a client that
stops sending); `/validate/scan` with a clean PDF, EICAR, the seed's JSON and an inbox file.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pdfs
import pytest
from apiserver import OPERATOR_KEY, Answer, Server, bearer, problem
from services import free_port, server_env

from dox_tasks import apikeys
from dox_tasks.api.upload_body import safe_name
from dox_tasks.db import queries
from dox_tasks.intake_switch import set_paused
from dox_tasks.ratelimit import day_key

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

DOCS = "/api/v1/documents"
CHECK = "/api/v1/validate/scan"
MIB = 1024 * 1024


def form(
    file: bytes | None, name: str = "doc.pdf", boundary: str = "dox-test-boundary", **fields: str
) -> bytes:
    """A multipart/form-data body: the fields, then the file part (unless None)."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
        for key, value in fields.items()
    ]
    if file is not None:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        parts.append((head + "Content-Type: application/pdf\r\n\r\n").encode() + file + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def multipart(key: str, boundary: str = "dox-test-boundary", **more: str) -> dict[str, str]:
    return {**bearer(key), "Content-Type": f"multipart/form-data; boundary={boundary}", **more}


def raw(key: str, name: str | None = "doc.pdf", **more: str) -> dict[str, str]:
    return {
        **bearer(key),
        "Content-Type": "application/pdf",
        **({"X-File-Name": name} if name else {}),
        **more,
    }


def staged_files(root: Path) -> list[Path]:
    """Everything in staging and in the store's temp folder (partial writes)."""
    return [p for d in ("staging", "tmp") for p in (root / d).rglob("*") if p.is_file()]


def send_raw(a: Api, path: str, body: Any, headers: dict[str, str]) -> http.client.HTTPResponse:
    """A POST whose answer's headers the test reads (``body`` may be an iterable: chunked)."""
    conn = http.client.HTTPConnection("127.0.0.1", a.server.port, timeout=60)
    conn.request("POST", path, body=body, headers=headers)
    return conn.getresponse()


def status_of(path: str) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(path).read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}


class Api:
    """A server on the test's stack, with keys for alice and bob (scopes submit, read)."""

    def __init__(self, tmp_path: Path, h: Any, settings: Any = None, **env: str):
        self.h, self.root = h, h.settings.storage
        self.inbox = tmp_path / "inbox"
        self.inbox.mkdir(exist_ok=True)
        self.server = Server(
            server_env(
                tmp_path, settings or h.settings, API_KEY=OPERATOR_KEY, DOX_INBOX_ROOT=str(self.inbox), **env
            ),
            tmp_path,
            tmp_path / f"api{time.monotonic_ns()}.log",
        )
        self.alice = apikeys.create(h.rt.state, "alice-uploader", "Alice", "submit,read").key
        self.bob = apikeys.create(h.rt.state, "bob-uploader", "bob", "submit,read").key

    def post(self, path: str, body: bytes, headers: dict[str, str], timeout: float = 60) -> Answer:
        return self.server.request("POST", path, body, headers, timeout=timeout)


@pytest.fixture
def api(tmp_path: Path, dox: Any) -> Iterator[Api]:
    """A server, and a worker to finish its workflows."""
    a = Api(tmp_path, dox, MAX_FILE_SIZE_MB="2", DOX_API_BODY_TIMEOUT_S="1")
    yield a
    a.server.stop()


@pytest.fixture
def quiet(tmp_path: Path, stack: Any, harness_factory: Any) -> Iterator[Api]:
    """A server and no worker: for what is answered before any workflow runs."""
    a = Api(tmp_path, harness_factory(stack), MAX_FILE_SIZE_MB="2", DOX_API_BODY_TIMEOUT_S="1")
    yield a
    a.server.stop()


def test_multipart_and_raw_uploads_end_success_through_the_worker(api: Api) -> None:
    pdf = pdfs.unique(1)
    code, _, queued = api.post(
        DOCS, form(pdf, "invoice.pdf", source="billing", metadata='{"order": 7}'), multipart(api.alice)
    )
    assert code == 202 and queued["status"] == "queued", queued
    row = api.h.wait([queued["workflow_id"]])[queued["workflow_id"]]
    assert row["current_state"] == "success", row
    assert (row["user_id"], row["user_display"], row["file_name"]) == ("alice", "Alice", "invoice.pdf")
    assert (row["source"], row["metadata"]) == ("billing", {"order": 7})
    assert row["sha256"] == hashlib.sha256(pdf).hexdigest() and row["size"] == len(pdf)

    # A raw body, waited for: 200 with the body GET /api/v1/workflows/{id} gives.
    other = pdfs.unique(2)
    answer = send_raw(api, DOCS + "?wait=30", other, raw(api.alice, "scan.pdf"))
    done = json.loads(answer.read())
    assert answer.status == 200, done
    assert answer.headers["Location"] == f"/api/v1/workflows/{done['workflow_id']}"
    assert done["status"] == "success" and done["file"] == "scan.pdf", done
    assert done["sha256"] == hashlib.sha256(other).hexdigest() and done["storage_key"], done
    assert [s["step"] for s in done["steps"]][:2] == ["validate", "scan"], done["steps"]
    read = api.server.get(answer.headers["Location"], bearer(api.alice))
    assert read[0] == 200 and set(read[2]) == set(done) and read[2]["status"] == "success"
    assert api.h.objects() == sorted([row["sha256"], done["sha256"]])
    assert staged_files(api.root) == []  # both ended: the staged copies are gone

    # A path in the file name: the stored name is its base name.
    code, _, evil = api.post(
        DOCS + "?wait=30", form(pdfs.unique(6), "../../etc/cron.d/evil.pdf"), multipart(api.alice)
    )
    assert code == 200 and evil["file"] == "evil.pdf" and evil["status"] == "success", evil
    code, _, win = api.post(DOCS + "?wait=30", pdfs.unique(7), raw(api.alice, "..\\..\\windows\\x.pdf"))
    assert code == 200 and win["file"] == "x.pdf", win


def test_refusals_are_problems_and_leave_nothing_staged(quiet: Api) -> None:
    """Each refusal is answered before any row exists; the paused intake last (it stays)."""
    _413_at_the_limit_plus_one_byte(quiet)
    _bad_input_is_a_problem(quiet)
    _json_that_breaks_a_parser_is_a_refusal(quiet)
    _a_client_that_stops_sending_gets_408(quiet)
    assert staged_files(quiet.root) == [] and queries.list_workflows(quiet.h.rt.state) == []
    exact = quiet.post(DOCS, b"%PDF-1.4\n" + b"x" * (2 * MIB - 9), raw(quiet.alice))  # the limit itself
    assert exact[0] == 202, exact
    _paused_intake_is_503_with_its_reason(quiet)


def _413_at_the_limit_plus_one_byte(quiet: Api) -> None:
    limit = 2 * MIB  # MAX_FILE_SIZE_MB=2
    over = b"%PDF-1.4\n" + b"x" * (limit + 1 - 9)
    for path, body, headers in (
        (DOCS, form(over), multipart(quiet.alice)),  # counted while parsed
        (DOCS, over, raw(quiet.alice)),  # refused on its Content-Length
        (CHECK, form(over), multipart(quiet.alice)),
    ):
        body_of = problem(quiet.post(path, body, headers), 413)
        assert "2 MiB limit" in body_of["detail"], body_of
    # Chunked, so no Content-Length to refuse on: counted as it arrives.
    assert (
        send_raw(quiet, DOCS, iter([over[: limit // 2], over[limit // 2 :]]), raw(quiet.alice)).status == 413
    )
    assert staged_files(quiet.root) == []
    assert queries.list_workflows(quiet.h.rt.state) == []  # no row either


def test_a_50_mib_upload_streams_within_32_mib_of_server_memory(
    tmp_path: Path, stack: Any, harness_factory: Any
) -> None:
    h = harness_factory(stack)  # no worker: only the upload is measured
    a = Api(tmp_path, h, MAX_FILE_SIZE_MB="64")
    try:
        warm = a.post(DOCS, pdfs.unique(3), raw(a.alice))
        assert warm[0] == 202, warm
        proc = f"/proc/{a.server.proc.pid}/status"
        before = status_of(proc)
        size = 50 * MIB
        piece = bytes(range(256)) * 4096  # 1 MiB
        headers = raw(a.alice, "big.bin", **{"Content-Length": str(size)})
        answer = send_raw(a, DOCS, (piece for _ in range(50)), headers)
        body = json.loads(answer.read())
        assert answer.status == 202, body
        after = status_of(proc)
        growth = after["VmHWM"] - before["VmRSS"]
        print(
            f"server RSS {before['VmRSS'] / MIB:.1f} MiB,"
            f" peak after a 50 MiB upload {after['VmHWM'] / MIB:.1f} MiB"
        )
        assert growth <= 32 * MIB, f"server RSS grew {growth / MIB:.1f} MiB for a 50 MiB upload"
        row = h.rt.state.get_workflow(body["workflow_id"])
        assert row["size"] == size and row["sha256"] == hashlib.sha256(piece * 50).hexdigest()
    finally:
        a.server.stop()


def test_one_idempotency_key_twenty_concurrent_uploads_one_workflow(quiet: Api) -> None:
    pdf = pdfs.unique(4)
    answers: list[Answer] = []

    def send() -> None:
        answers.append(quiet.post(DOCS, pdf, raw(quiet.alice, **{"Idempotency-Key": "order-42"})))

    threads = [threading.Thread(target=send) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(code for code, _, _ in answers)
    ids = {body["workflow_id"] for _, _, body in answers}
    assert codes == [200] * 19 + [202], answers
    assert len(ids) == 1
    assert quiet.h.rt.state.find_by_idempotency_key("alice", "order-42") == ids.pop()
    # The same key from another user is another workflow; ?wait that sees no end is 202.
    answer = send_raw(quiet, DOCS + "?wait=0.5", pdf, raw(quiet.bob, **{"Idempotency-Key": "order-42"}))
    theirs = json.loads(answer.read())
    assert answer.status == 202 and theirs["status"] == "queued", theirs
    assert answer.headers["Location"] == f"/api/v1/workflows/{theirs['workflow_id']}"
    assert theirs["workflow_id"] != quiet.h.rt.state.find_by_idempotency_key("alice", "order-42")
    assert quiet.h.rt.state.get_workflow(theirs["workflow_id"])["user_id"] == "bob"


def test_racing_uploads_under_one_idempotency_key_leave_one_staged_copy(quiet: Api) -> None:
    """Different bodies racing under one key: each was staged, one became the workflow, and the
    others' copies stayed in staging, no row counting them against a quota, until the weekly
    maintenance (a way to fill the disk)."""
    answers: list[Answer] = []

    def send(n: int) -> None:
        answers.append(
            quiet.post(DOCS, pdfs.unique(100 + n), raw(quiet.alice, **{"Idempotency-Key": "race"}))
        )

    threads = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(code for code, _, _ in answers) == [200] * 7 + [202], answers
    (wid,) = {body["workflow_id"] for _, _, body in answers}
    sha = quiet.h.rt.state.get_workflow(wid)["sha256"]
    assert [p.name for p in staged_files(quiet.root)] == [sha]


def test_a_submit_only_key_learns_ids_and_states_not_results(api: Api) -> None:
    """Without ``read`` a key cannot read a workflow's body: not by replaying an idempotency key
    (another key of its user may have sent it) nor by waiting for its own upload to end."""
    sender = apikeys.create(api.h.rt.state, "scanner", "Alice", "submit").key
    code, _, full = api.post(DOCS + "?wait=30", pdfs.unique(12), raw(api.alice, **{"Idempotency-Key": "q3"}))
    assert code == 200 and full["status"] == "success" and full["steps"], full
    replayed = api.post(DOCS, pdfs.unique(13), raw(sender, **{"Idempotency-Key": "q3"}))
    assert replayed[:2] == (200, "application/json"), replayed
    assert replayed[2] == {"workflow_id": full["workflow_id"], "status": "success"}, replayed
    code, _, own = api.post(DOCS + "?wait=30", pdfs.unique(14), raw(sender))
    assert code == 200 and set(own) == {"workflow_id", "status"} and own["status"] == "success", own
    assert api.server.get(f"/api/v1/workflows/{own['workflow_id']}", bearer(sender))[0] == 403


def _paused_intake_is_503_with_its_reason(quiet: Api) -> None:
    set_paused(quiet.h.rt, True, "ops-anna", "disk full on the store")
    deadline = time.monotonic() + 5
    while True:  # the server reads the switch at most once a second
        answer = quiet.post(DOCS, pdfs.unique(5), raw(quiet.alice))
        if answer[0] == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    body = problem(answer, 503)
    assert "disk full on the store" in body["detail"] and "paused" in body["detail"], body
    assert send_raw(quiet, DOCS, pdfs.unique(5), raw(quiet.alice)).headers["Retry-After"] == "60"


def _bad_input_is_a_problem(quiet: Api) -> None:
    pdf = pdfs.unique(6)
    headers = multipart(quiet.alice)
    broken = b"--dox-test-boundary\r\nthis is no part header at all\r\n\r\n" + pdf
    assert "multipart" in problem(quiet.post(DOCS, broken, headers), 400)["detail"]
    unfinished = form(pdf).rsplit(b"--dox-test-boundary--", 1)[0]
    assert "closing boundary" in problem(quiet.post(DOCS, unfinished, headers), 400)["detail"]
    assert "no file part" in problem(quiet.post(DOCS, form(None, source="x"), headers), 400)["detail"]
    problem(quiet.post(DOCS, form(pdf, metadata="[1, 2]"), headers), 422)
    problem(quiet.post(DOCS, form(pdf, metadata="not json"), headers), 422)
    big = json.dumps({"note": "x" * (16 * 1024)})
    assert "metadata" in problem(quiet.post(DOCS, form(pdf, metadata=big), headers), 413)["detail"]
    late = form(pdf)[: -len(b"--dox-test-boundary--\r\n")] + form(None, source="late")
    assert "before file" in problem(quiet.post(DOCS, late, headers), 400)["detail"]
    problem(
        quiet.post(
            DOCS, b"a=b", {**bearer(quiet.alice), "Content-Type": "application/x-www-form-urlencoded"}
        ),
        415,
    )
    problem(quiet.post(DOCS, pdf, raw(quiet.alice) | {"Authorization": "Bearer nope"}), 401)
    problem(quiet.post(DOCS + "?wait=61", pdf, raw(quiet.alice)), 422)
    assert staged_files(quiet.root) == []


def _json_that_breaks_a_parser_is_a_refusal(quiet: Api) -> None:
    """Numbers JSON cannot hold and nesting deeper than Python's stack were 500s (the row's
    insert, a recursion), each leaving its staged copy behind."""
    for metadata in ('{"a": 1e999}', '{"a": [-1e400]}', '{"a": ' * 400 + "1" + "}" * 400):
        refused = problem(
            quiet.post(DOCS, form(pdfs.unique(11), metadata=metadata), multipart(quiet.alice)), 422
        )
        assert "metadata" in refused["detail"], refused
    as_json = {**bearer(quiet.alice), "Content-Type": "application/json"}
    assert "JSON" in problem(quiet.post(CHECK, b"[" * 5000, as_json), 400)["detail"]
    assert staged_files(quiet.root) == [] and queries.list_workflows(quiet.h.rt.state) == []
    assert "Traceback" not in quiet.server.log.read_text()


def _a_client_that_stops_sending_gets_408(quiet: Api) -> None:
    head = (
        f"POST {DOCS} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {quiet.alice}\r\n"
        "Content-Type: application/pdf\r\nX-File-Name: slow.pdf\r\nContent-Length: 2000000\r\n\r\n"
    ).encode()
    # Stopping within the first piece (read before intake starts), and after it (mid-staging).
    for sent, staging in ((500, False), (1_500_000, True)):
        with socket.create_connection(("127.0.0.1", quiet.server.port), timeout=10) as sock:
            sock.sendall(head + (b"%PDF-1.4\n" + b"x" * sent)[:sent])
            started = time.monotonic()
            time.sleep(0.4)
            assert bool(staged_files(quiet.root)) == staging, staged_files(quiet.root)
            answer = b""
            while not answer.rstrip().endswith(b"}"):
                piece = sock.recv(65536)
                if not piece:
                    break
                answer += piece
            took = time.monotonic() - started
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.startswith(b"HTTP/1.1 408"), answer
        assert took < 5, took  # DOX_API_BODY_TIMEOUT_S=1
        assert b"retry-after: 1" in rest.lower() and b"application/problem+json" in rest
        assert b"stopped arriving" in rest
        assert staged_files(quiet.root) == []
    # A client that goes away mid-body: its partial staging goes too.
    with socket.create_connection(("127.0.0.1", quiet.server.port), timeout=10) as sock:
        sock.sendall(head + b"%PDF-1.4\n" + b"x" * 1_500_000)
        time.sleep(0.3)
    deadline = time.monotonic() + 5
    while staged_files(quiet.root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert staged_files(quiet.root) == []
    assert queries.list_workflows(quiet.h.rt.state) == []


def test_validate_scan_checks_without_storing(api: Api) -> None:
    _validate_scan_json_names_a_file_in_the_inbox(api)  # refusals first: nothing staged yet
    _validate_scan_bodies(api)


def _validate_scan_bodies(api: Api) -> None:
    pdf = pdfs.unique(9)
    code, _, clean = api.post(CHECK + "?wait=30", form(pdf, "check.pdf"), multipart(api.alice))
    assert code == 200, clean
    assert (clean["status"], clean["scan"], clean["storage_key"]) == ("success", "clean", None), clean
    assert [s["step"] for s in clean["steps"]] == ["validate", "scan"]
    assert api.h.objects() == [] and staged_files(api.root) == []
    today = day_key()  # checks count against the user's daily limit like uploads
    assert api.h.rt.limiter.count("alice", today) == 2  # this one and the inbox file's
    # It is never the original of a later upload of the same bytes.
    code, _, kept = api.post(DOCS + "?wait=30", pdf, raw(api.alice))
    assert code == 200 and kept["status"] == "success" and kept["duplicate_of"] is None, kept
    # …and a check of stored bytes still scans them (it is never a duplicate either).
    code, _, again = api.post(CHECK + "?wait=30", pdf, raw(api.alice))
    assert (again["status"], again["scan"], again["duplicate_of"]) == ("success", "clean", None), again

    code, _, bad = api.post(CHECK + "?wait=30", pdfs.eicar_pdf(), raw(api.alice, "eicar.pdf"))
    assert code == 200 and bad["status"] == "rejected" and bad["reason"] == "infected", bad
    assert bad["signature"].startswith("Dox.Test.EICAR") and bad["storage_key"] is None, bad


def _validate_scan_json_names_a_file_in_the_inbox(api: Api) -> None:
    seed = {"file_path": "/tmp/test.pdf", "file_hash": "test", "file_size": 1024}
    as_json = {**bearer(api.alice), "Content-Type": "application/json"}
    assert "file_hash" in problem(api.post(CHECK, json.dumps(seed).encode(), as_json), 422)["detail"]
    pdf = pdfs.unique(10)
    (api.inbox / "in").mkdir()
    (api.inbox / "in" / "q3.pdf").write_bytes(pdf)
    ref = {"file_path": "in/q3.pdf", "file_hash": hashlib.sha256(pdf).hexdigest(), "file_size": len(pdf)}
    outside = {**ref, "file_path": "/etc/hostname"}
    assert "inbox" in problem(api.post(CHECK, json.dumps(outside).encode(), as_json), 422)["detail"]
    escape = {**ref, "file_path": "../inbox/in/q3.pdf"}
    problem(api.post(CHECK, json.dumps(escape).encode(), as_json), 422)
    wrong_size = {**ref, "file_size": len(pdf) + 1}
    size_refused = problem(api.post(CHECK, json.dumps(wrong_size).encode(), as_json), 422)["detail"]
    assert "file_size" in size_refused and str(len(pdf)) not in size_refused  # no size oracle
    wrong_hash = {**ref, "file_hash": "0" * 64}
    assert "SHA-256" in problem(api.post(CHECK, json.dumps(wrong_hash).encode(), as_json), 422)["detail"]
    assert staged_files(api.root) == []
    problem(api.post(DOCS, json.dumps(ref).encode(), as_json), 415)  # documents take no paths

    code, _, done = api.post(CHECK + "?wait=30", json.dumps(ref).encode(), as_json)
    assert code == 200, done
    assert (done["status"], done["scan"], done["file"], done["storage_key"]) == (
        "success",
        "clean",
        "q3.pdf",
        None,
    )
    assert (api.inbox / "in" / "q3.pdf").read_bytes() == pdf  # the inbox file is left alone


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\scan.pdf", "scan.pdf"),
        ("a\x00b\x1bc\u202edp.pdf", "abcdp.pdf"),
        ("..", None),
        ("  ", None),
        ("é" * 200 + ".pdf", "é" * 125 + ".pdf"),
    ],
)
def test_safe_name(given: str, kept: str | None) -> None:
    assert safe_name(given) == kept
    if kept:
        assert len(kept.encode()) <= 255


def test_a_broker_that_refuses_the_message_still_accepts_the_recorded_upload(
    tmp_path: Path, stack: Any, harness_factory: Any
) -> None:
    h = harness_factory(stack)
    dead = stack.model_copy(update={"broker_url": f"redis://127.0.0.1:{free_port()}/0"})  # nothing listens
    a = Api(tmp_path, h, dead)
    try:
        code, _, body = a.post(DOCS, pdfs.unique(11), raw(a.alice))
        assert code == 202 and body["status"] == "queued", body
        assert h.rt.state.get_workflow(body["workflow_id"])["current_state"] == "queued"  # the reaper's
        assert "refused its message" in a.server.stop()
    finally:
        a.server.stop()
