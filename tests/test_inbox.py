"""Inbox confinement on a real filesystem: opened once, beneath the root, no symlinks, one link.

The race tests exchange a real folder in the inbox with a symlink to an outside folder
(``renameat2(RENAME_EXCHANGE)``, atomic) while paths are opened. The check-then-open
that DOX used to do is kept here as ``naive_open``; it must escape at least once, so
the harness is known to make the race happen, and DOX's open must escape never.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pdfs
import pytest
from services import clean_env, dox

from dox_tasks.errors import SubmissionError

INSIDE = b"%PDF-1.4 inside the inbox"
SECRET = b"%PDF-1.4 SECRET from outside"


# -- the filesystem ------------------------------------------------------------------------


@pytest.fixture
def inbox(tmp_path: Path) -> Path:
    root = tmp_path / "inbox"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "top.pdf").write_bytes(b"%PDF top")
    (root / "sub" / "ok.pdf").write_bytes(b"%PDF ok")
    (root / "sub" / "deeper" / "nested.pdf").write_bytes(b"%PDF nested")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    (root / "link-out.pdf").symlink_to(outside / "secret.txt")
    (root / "link-in.pdf").symlink_to(root / "sub" / "ok.pdf")
    (root / "linkdir-in").symlink_to(root / "sub")
    (root / "linkdir-out").symlink_to(outside)
    (root / "zero.pdf").symlink_to("/dev/zero")
    os.link(outside / "secret.txt", root / "hardlink.pdf")
    os.mkfifo(root / "pipe.pdf")
    return root


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs with openat2 (where the kernel has it) and with the per-component walk."""
    from dox_tasks import inbox as module

    if request.param == "openat2" and module._syscall is None:
        pytest.skip(f"no openat2 here ({platform.machine()}, {platform.release()})")
    if request.param == "walk":
        monkeypatch.setattr(module, "_syscall", None)  # as on a kernel without it: ENOSYS
    return str(request.param)


def read(root: Path | None, path: str | os.PathLike[str], required: bool = True) -> tuple[bytes, str]:
    from dox_tasks.inbox import open_document

    opened = open_document(path, root, required=required)
    with opened.file as fh:
        return fh.read(), opened.name


# -- what is accepted ----------------------------------------------------------------------


def test_plain_and_nested_files_open(inbox: Path, mode: str) -> None:
    assert read(inbox, "top.pdf") == (b"%PDF top", "top.pdf")
    assert read(inbox, "sub/ok.pdf") == (b"%PDF ok", "ok.pdf")
    assert read(inbox, "sub/deeper/nested.pdf") == (b"%PDF nested", "nested.pdf")
    assert read(inbox, inbox / "sub" / "ok.pdf")[0] == b"%PDF ok"  # absolute, inside
    assert read(inbox, "./sub//deeper/./nested.pdf")[0] == b"%PDF nested"  # empty and '.' parts
    assert read(inbox, "//" + str(inbox).lstrip("/") + "/top.pdf")[0] == b"%PDF top"


def test_the_root_itself_may_be_a_symlink(inbox: Path, tmp_path: Path, mode: str) -> None:
    """The operator's setting: resolved once; absolute paths may use either spelling."""
    alias = tmp_path / "alias"
    alias.symlink_to(inbox)
    assert read(alias, "sub/ok.pdf")[0] == b"%PDF ok"
    assert read(alias, alias / "sub" / "ok.pdf")[0] == b"%PDF ok"
    assert read(alias, inbox / "sub" / "ok.pdf")[0] == b"%PDF ok"


def test_the_handle_is_blocking_and_not_inherited(inbox: Path, mode: str) -> None:
    from dox_tasks.inbox import open_document

    with open_document("top.pdf", inbox, required=True).file as fh:
        assert os.get_blocking(fh.fileno()) and not os.get_inheritable(fh.fileno())


def test_a_name_that_is_not_utf8_opens_and_is_recorded_readably(inbox: Path, mode: str) -> None:
    raw = os.path.join(os.fsencode(inbox), b"caf\xe9.pdf")
    with open(raw, "wb") as fh:
        fh.write(b"%PDF latin-1")
    assert read(inbox, os.fsdecode(b"caf\xe9.pdf")) == (b"%PDF latin-1", "caf\ufffd.pdf")


# -- what is refused, and how it is said ---------------------------------------------------


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("../outside/secret.txt", "'..' is not allowed"),
        ("sub/../../outside/secret.txt", "'..' is not allowed"),
        ("sub/..", "'..' is not allowed"),
        ("link-out.pdf", "'link-out.pdf' is a symlink, and inbox paths never follow symlinks"),
        ("link-in.pdf", "is a symlink"),  # even one that stays inside: not followed
        ("zero.pdf", "'zero.pdf' is a symlink"),  # /dev/zero behind a symlink
        ("linkdir-in/ok.pdf", "'linkdir-in' is a symlink"),  # a symlinked parent folder
        ("linkdir-out/secret.txt", "'linkdir-out' is a symlink"),
        ("hardlink.pdf", "has 2 hard links: refused, a hard link can point at a file outside the inbox"),
        ("pipe.pdf", "not a regular file: 'pipe.pdf' is a FIFO"),
        ("sub", "is a folder"),
        ("sub/ok.pdf/", "ends with '/'"),
        (".", "the inbox folder itself"),
        ("/etc/hostname", "lies outside the inbox"),
        ("missing.pdf", "no such file: 'missing.pdf' (looked in '{inbox}')"),
        ("sub/missing.pdf", "no such file: 'sub/missing.pdf' (looked in '{inbox}/sub')"),
        ("nope/x.pdf", "no such file: 'nope/x.pdf' (no folder 'nope' in '{inbox}')"),
        ("top.pdf/x.pdf", "('top.pdf' in '{inbox}' is not a folder)"),
        ("a\x00b.pdf", "NUL byte"),
        ("\ud800.pdf", "not a valid file name"),
        ("x" * 300 + ".pdf", "longer than the filesystem allows"),
        ("a/" * 2100 + "x.pdf", "paths are at most 4095 bytes"),
        ("", "the path is empty"),
    ],
)
def test_refusals_say_why(inbox: Path, mode: str, path: str, words: str) -> None:
    with pytest.raises(SubmissionError) as caught:
        read(inbox, path)
    assert words.format(inbox=os.path.realpath(inbox)) in str(caught.value)


def test_a_fifo_never_hangs_intake(inbox: Path, mode: str) -> None:
    """Refused at once, whether the inbox holds it or an operator's path names it."""
    outcome: list[str] = []

    def attempt() -> None:
        for root, path in ((inbox, "pipe.pdf"), (None, str(inbox / "pipe.pdf"))):
            try:
                read(root, path, required=False)
            except SubmissionError as exc:
                outcome.append(str(exc))

    t = threading.Thread(target=attempt, daemon=True)
    started = time.monotonic()
    t.start()
    t.join(10)
    assert not t.is_alive(), "opening a FIFO hung"
    assert time.monotonic() - started < 5
    assert len(outcome) == 2 and all("FIFO" in o for o in outcome), outcome


def test_hard_link_race_on_the_link_count_is_caught(inbox: Path, tmp_path: Path, mode: str) -> None:
    """A second name removed between open and fstat must not pass the one-link check."""
    from dox_tasks.inbox import open_beneath

    outside = tmp_path / "outside" / "secret.txt"
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            try:
                os.link(outside, inbox / "flip.pdf")
                os.unlink(inbox / "flip.pdf")
            except (FileExistsError, FileNotFoundError):
                pass

    t = threading.Thread(target=flip, daemon=True)
    t.start()
    try:
        for _ in range(300):
            try:
                with open_beneath(inbox, "flip.pdf").file as fh:
                    assert fh.read() != SECRET, "a hard-linked outside file was opened"
            except SubmissionError:
                pass
    finally:
        stop.set()
        t.join()


def test_a_kernel_without_openat2_falls_back_to_the_walk(
    inbox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSYS (an old kernel, or a seccomp filter) once: the walk from then on, same answers."""
    from dox_tasks import inbox as module

    calls: list[str] = []

    def enosys(dir_fd: int, path: bytes, how: Any) -> int:
        calls.append(os.fsdecode(path))
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(module, "_syscall", enosys)
    assert read(inbox, "sub/deeper/nested.pdf")[0] == b"%PDF nested"
    assert module._syscall is None and calls == ["sub/deeper"]
    with pytest.raises(SubmissionError, match="'linkdir-in' is a symlink"):
        read(inbox, "linkdir-in/ok.pdf")


def test_service_paths_need_an_inbox() -> None:
    with pytest.raises(SubmissionError, match="DOX_INBOX_ROOT"):
        read(None, "/etc/hostname", required=True)


def test_without_an_inbox_local_paths_are_the_operators(
    inbox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No DOX_INBOX_ROOT, not from a service: opened as given, relative to the current folder."""
    monkeypatch.chdir(inbox)
    assert read(None, "sub/ok.pdf", required=False)[0] == b"%PDF ok"
    assert read(None, "link-in.pdf", required=False) == (b"%PDF ok", "link-in.pdf")
    with pytest.raises(SubmissionError, match="not a regular file: 'zero.pdf' is a character device"):
        read(None, "zero.pdf", required=False)
    with pytest.raises(SubmissionError) as caught:
        read(None, "sub/missing.pdf", required=False)
    assert str(caught.value) == f"no such file: 'sub/missing.pdf' (looked in '{os.getcwd()}/sub')"


# -- the swap race -------------------------------------------------------------------------

_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2

# The swapper: a loop of renameat2(RENAME_EXCHANGE) calls through ctypes. It runs in a
# child process so that the GIL does not take turns with the opener (a thread hit the
# race about eight times less often here). SIGTERM ends it; it prints how many swaps it made.
SWAPPER = """
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
number, a, b = int(sys.argv[1]), os.fsencode(sys.argv[2]), os.fsencode(sys.argv[3])
done = []
signal.signal(signal.SIGTERM, lambda *_: done.append(1))
swaps = 0
print("ready", flush=True)
while not done:
    if libc.syscall(number, -100, a, -100, b, 2) != 0:
        sys.exit(f"renameat2: {os.strerror(ctypes.get_errno())}")
    swaps += 1
print(swaps, flush=True)
"""


def renameat2_number() -> int:
    number = _RENAMEAT2.get(platform.machine())
    if number is None:
        pytest.skip(f"no renameat2 syscall number known for {platform.machine()}")
    return number


def exchange(a: Path, b: Path) -> None:
    """``renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE)``: both names swap, atomically."""
    libc = ctypes.CDLL(None, use_errno=True)
    ok = libc.syscall(
        ctypes.c_long(renameat2_number()),
        ctypes.c_int(_AT_FDCWD),
        ctypes.c_char_p(os.fsencode(a)),
        ctypes.c_int(_AT_FDCWD),
        ctypes.c_char_p(os.fsencode(b)),
        ctypes.c_uint(_RENAME_EXCHANGE),
    )
    if ok != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class Race:
    """An inbox whose folder ``dir`` keeps being exchanged with a symlink to an outside folder."""

    def __init__(self, tmp_path: Path):
        self.inbox = tmp_path / "racy-inbox"
        (self.inbox / "dir").mkdir(parents=True)
        (self.inbox / "dir" / "doc.pdf").write_bytes(INSIDE)
        outside = tmp_path / "elsewhere"
        outside.mkdir()
        (outside / "doc.pdf").write_bytes(SECRET)
        (self.inbox / "swap").symlink_to(outside)
        self.swaps = 0

    @contextmanager
    def running(self) -> Iterator[None]:
        args = [str(renameat2_number()), str(self.inbox / "dir"), str(self.inbox / "swap")]
        child = subprocess.Popen(
            [sys.executable, "-c", SWAPPER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            yield
        finally:
            child.terminate()
            out, errors = child.communicate(timeout=30)
        assert child.returncode == 0, errors
        self.swaps += int(out)

    def tally(self, attempt: Callable[[], str], tries: int, changes: int, most: int) -> Counter[str]:
        """Outcomes of ``attempt()`` (``inside``, ``escaped``, ``refused``, ``error``) under the swap.

        At least ``tries`` attempts, and on (up to ``most``) until the outcome changed
        ``changes`` times: on a busy machine the scheduler can park the swapper for a
        while, and tries it sat out prove nothing.
        """
        seen: Counter[str] = Counter()
        last, changed = None, 0
        with self.running():
            while seen.total() < tries or (changed < changes and seen.total() < most):
                try:
                    outcome = attempt()
                except SubmissionError:
                    outcome = "refused"
                except OSError:  # the old code's realpath trips over the swap now and then
                    outcome = "error"
                seen[outcome] += 1
                changed += last is not None and outcome != last
                last = outcome
        assert changed >= changes, f"the race hardly ran: {changed} changes in {dict(seen)}"
        return seen


@pytest.fixture
def race(tmp_path: Path) -> Race:
    r = Race(tmp_path)
    try:
        exchange(r.inbox / "dir", r.inbox / "swap")
        exchange(r.inbox / "dir", r.inbox / "swap")
    except OSError as exc:
        if exc.errno in (errno.ENOSYS, errno.EINVAL):
            pytest.skip(f"renameat2(RENAME_EXCHANGE) unsupported here: {exc}")
        raise
    return r


def naive_open(root: Path, path: str) -> bytes:
    """DOX's old intake: confine (resolve, check it is inside), then open the path again."""
    real_root = root.resolve()
    resolved = (real_root / path).resolve()
    if not resolved.is_relative_to(real_root) or not resolved.is_file():
        raise SubmissionError("refused")
    with resolved.open("rb") as fh:
        return fh.read()


def read_dir_doc(opener: Callable[[Path, str], bytes], root: Path) -> str:
    return "escaped" if opener(root, "dir/doc.pdf") == SECRET else "inside"


def test_the_naive_check_then_open_escapes(race: Race) -> None:
    """The harness makes the race happen (else the next test proves nothing)."""
    seen = race.tally(lambda: read_dir_doc(naive_open, race.inbox), tries=200, changes=100, most=50000)
    assert seen["escaped"] >= 1, (dict(seen), race.swaps)


def test_doxs_open_never_escapes_the_swap(race: Race, mode: str) -> None:
    from dox_tasks.inbox import open_beneath

    def dox_open(root: Path, path: str) -> bytes:
        with open_beneath(root, path).file as fh:
            return fh.read()

    seen = race.tally(lambda: read_dir_doc(dox_open, race.inbox), tries=200, changes=100, most=50000)
    assert seen["escaped"] == 0 and seen["error"] == 0, dict(seen)
    assert seen["inside"] and seen["refused"], dict(seen)


# -- through intake.submit -----------------------------------------------------------------


def _workflows(h: Any) -> list[dict[str, Any]]:
    from sqlalchemy import text

    with h.rt.state.engine.connect() as c:
        rows = c.execute(text("select sha256, file_name, current_state from workflow_states"))
        return [dict(r._mapping) for r in rows]


def test_submit_stages_only_inbox_bytes_while_the_folder_is_swapped(
    race: Race, settings_factory: Any, harness_factory: Any
) -> None:
    """Service submissions under the swap: what is staged is always the inbox file's bytes."""
    from dox_tasks import submit

    h = harness_factory(settings_factory(inbox_root=race.inbox))
    secret = hashlib.sha256(SECRET).hexdigest()
    inside = hashlib.sha256(INSIDE).hexdigest()

    def attempt() -> str:
        workflow_id = submit("dir/doc.pdf", user="svc", from_service=True)
        sha = h.rt.state.get_workflow(workflow_id)["sha256"]
        return {inside: "inside", secret: "escaped"}[sha]

    seen = race.tally(attempt, tries=200, changes=200, most=20000)
    assert seen["escaped"] == 0, f"bytes from outside the inbox were staged: {dict(seen)}"
    assert not h.rt.storage.staged_path(secret).exists()
    assert seen["error"] == 0 and seen["inside"] and seen["refused"], dict(seen)
    assert {r["sha256"] for r in _workflows(h)} == {inside}


def test_submit_from_a_service_refuses_links_and_paths_outside(
    inbox: Path, settings_factory: Any, harness_factory: Any
) -> None:
    """Through the public entry point: a clear refusal, and no workflow is created."""
    from dox_tasks import submit

    h = harness_factory(settings_factory(inbox_root=inbox))
    for path, words in (
        ("hardlink.pdf", "has 2 hard links"),  # the old code staged the outside file's bytes
        ("linkdir-in/ok.pdf", "'linkdir-in' is a symlink"),  # and followed this one
        ("../outside/secret.txt", "'..' is not allowed"),
        ("link-out.pdf", "is a symlink"),
        ("pipe.pdf", "FIFO"),
        (str(inbox.parent / "outside" / "secret.txt"), "lies outside the inbox"),
    ):
        with pytest.raises(SubmissionError, match=words):
            submit(path, user="svc", from_service=True)
    assert _workflows(h) == []
    submit("sub/deeper/nested.pdf", user="svc", from_service=True)
    assert [(r["file_name"], r["sha256"]) for r in _workflows(h)] == [
        ("nested.pdf", hashlib.sha256(b"%PDF nested").hexdigest())
    ]


def test_the_dox_submit_task_processes_inbox_files_and_refuses_hard_links(
    tmp_path: Path, settings_factory: Any, harness_factory: Any, clamd_url: str, caplog: Any
) -> None:
    """The broker path with a real (embedded) worker: the stored object is the inbox file's bytes."""
    root = tmp_path / "shared-inbox"
    root.mkdir()
    doc = pdfs.unique(41)
    (root / "a.pdf").write_bytes(doc)
    (tmp_path / "private.pdf").write_bytes(pdfs.unique(42))
    os.link(tmp_path / "private.pdf", root / "b.pdf")
    h = harness_factory(settings_factory(inbox_root=root, clamd_url=clamd_url))
    for name in ("b.pdf", "a.pdf"):
        h.app.send_task("dox.submit", args=[name], kwargs={"user": "svc"}, queue="intake")
    # One worker for every queue: the embedded broker is in-process, so intake may be mixed
    # (two in-process workers at once do not always stop within their shutdown timeout).
    from dox_tasks.contract import QUEUES

    h.worker(list(QUEUES))
    h.wait_until(lambda: any(r["current_state"] == "success" for r in _workflows(h)), what="a.pdf's workflow")
    assert [(r["file_name"], r["sha256"]) for r in _workflows(h)] == [
        ("a.pdf", hashlib.sha256(doc).hexdigest())
    ]
    assert h.objects() == [hashlib.sha256(doc).hexdigest()]
    assert "dox.submit refused 'b.pdf'" in caplog.text and "has 2 hard links" in caplog.text


# -- the command line ----------------------------------------------------------------------


def test_dox_run_reads_a_relative_path_from_the_current_folder(tmp_path: Path) -> None:
    """`dox run in` with DOX_INBOX_ROOT set: ``in/x.pdf`` is ./in/x.pdf, not <inbox>/in/x.pdf."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.pdf").write_bytes(pdfs.unique(43))
    env = clean_env(tmp_path, DOX_INBOX_ROOT=str(tmp_path / "in"))
    res = dox(["run", "in", "--json"], env, tmp_path)
    assert res.returncode == 0, res.stderr
    (result,) = map(json.loads, res.stdout.splitlines())
    # Named relative to the folder given (issue 13), and found in ./in, not <inbox>/in.
    assert (result["file"], result["status"]) == ("x.pdf", "success")
    res = dox(["run", "in/x.pdf", "--json"], env, tmp_path / "in")
    assert res.returncode == 2 and "no such file or folder: in/x.pdf" in res.stderr
    assert f"(looked in {tmp_path / 'in' / 'in'})" in res.stderr


def test_dox_run_says_which_folder_it_looked_in(tmp_path: Path) -> None:
    (tmp_path / "elsewhere.pdf").write_bytes(pdfs.unique(44))
    (tmp_path / "in").mkdir()
    env = clean_env(tmp_path, DOX_INBOX_ROOT=str(tmp_path / "in"))
    res = dox(["run", "elsewhere.pdf"], env, tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "lies outside the inbox" in res.stderr and str(tmp_path / "in") in res.stderr


def test_a_root_replaced_by_a_symlink_after_start_fails_closed(tmp_path):
    """The root is pinned when first used (a worker pins it at start-up): replacing it
    with a symlink to another folder later refuses instead of following it."""
    from dox_tasks.errors import SubmissionError
    from dox_tasks.inbox import open_beneath, pin_root

    root = tmp_path / "inbox"
    root.mkdir()
    (root / "a.pdf").write_bytes(b"inside")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.pdf").write_bytes(b"SECRET")
    pin_root(root)
    with open_beneath(root, "a.pdf").file as fh:
        assert fh.read() == b"inside"
    root.rename(tmp_path / "moved")
    root.symlink_to(elsewhere)
    with pytest.raises(SubmissionError, match="changed since this process started"):
        open_beneath(root, "a.pdf")
