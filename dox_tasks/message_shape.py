"""What a task message may carry before Celery builds a request from it.

Celery and kombu trust a message's structure. A string where the headers belong, a
time limit of ``"x"`` or a task id that is an object kill a worker's main process
(the request's constructor, the pool's timer), and the message goes back on the
queue at shutdown — one message, a crash loop. Links (``callbacks``, ``errbacks``)
and chains make the worker send whatever they describe with *its* broker login, so a
sender who may only push onto ``intake`` could push step messages anywhere. So every
message is checked here first (from :class:`dox_tasks.queue_policy.GuardedTask`'s
consumer strategy), and:

- a message that is not protocol 2 (``[args, kwargs, embed]``), whose headers are not
  what Celery expects, whose time limits are not between 1 s and ``WORKFLOW_TIMEOUT``,
  whose ETA lies beyond the visibility timeout (it would be delivered twice), or whose
  arguments do not fit the task is refused (rejected unrun);
- on ``intake`` any link, chain, chord or ETA is refused; elsewhere links and chains
  are dropped (the runner sends the next step from the recorded definition) and only
  the team sync's probes keep their chord.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from .contract import INTAKE_QUEUE
from .definitions.catalog import is_step_task

MAX_ID = 200
MAX_REPR = 4096
_HEADER_TEXT = ("task", "id", "root_id", "parent_id", "group", "shadow", "lang", "origin", "meth")
_HEADER_REPR = ("argsrepr", "kwargsrepr")
_EMBED = ("callbacks", "errbacks", "chain", "chord")
#: Headers Celery also reads as links, chains and chord membership (the body's embed is
#: applied over the headers, so an empty embed leaves these in force).
_HEADER_LINKS = ("callbacks", "errbacks", "chain", "chord")
_HEADER_GROUP = ("group", "group_index", "group_size")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_WORKFLOW_ID = re.compile(r"[0-9A-Za-z-]{1,64}")
_STEP = re.compile(r"[A-Za-z0-9_. -]{1,100}")
_MAX_RUN = 2**31 - 1
#: Tasks whose messages keep their chord (Celery's chord counting needs it).
_KEEPS_CHORD = frozenset({"dox.sync.probe"})


def check(message: Any, task: str, queue: str, *, max_time_limit: float, max_eta_s: float) -> str | None:
    """Why ``message`` (for ``task``, from ``queue``) must not run; ``None`` if it may.

    May rewrite the message's body to drop links and chains (see the module docstring).
    """
    headers = message.headers
    if not isinstance(headers, dict):
        return "its headers are not an object"
    intake = queue == INTAKE_QUEUE
    why = _headers(headers, max_time_limit, max_eta_s, intake=intake)
    if why:
        return why
    keeps_chord = task in _KEEPS_CHORD
    in_headers = [k for k in _HEADER_LINKS if headers.get(k) and not (k == "chord" and keeps_chord)]
    in_headers += [k for k in _HEADER_GROUP if headers.get(k) is not None and not keeps_chord]
    if intake and (in_headers or headers.get("ignore_result") is False):
        return f"its headers carry {', '.join(in_headers) or 'ignore_result'} (a submission runs alone)"
    for key in in_headers:
        headers[key] = None  # the headers are read when the request is built, after this
    payload = message.payload
    if not (isinstance(payload, list | tuple) and len(payload) == 3):
        return "its body is not [args, kwargs, embed] (Celery message protocol 2)"
    args, kwargs, embed = payload
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict) or not isinstance(embed, dict):
        return "its body is not [args, kwargs, embed] (Celery message protocol 2)"
    if not set(embed) <= set(_EMBED):  # Celery applies these over the request's own fields
        return "its embed holds more than callbacks, errbacks, chain and chord"
    why = _arguments(task, list(args), kwargs)
    if why:
        return why
    carried = [k for k in _EMBED if embed.get(k) and not (k == "chord" and keeps_chord)]
    if carried and queue == INTAKE_QUEUE:
        return f"it carries {', '.join(carried)} (a submission runs alone)"
    if carried:
        clean = {**embed, **dict.fromkeys(carried)}
        message.body = json.dumps([args, kwargs, clean]).encode()
        message._decoded_cache = [args, kwargs, clean]
    return None


def _headers(headers: dict[str, Any], max_time_limit: float, max_eta_s: float, intake: bool) -> str | None:
    for key in _HEADER_TEXT:
        value = headers.get(key)
        if value is not None and not (isinstance(value, str) and len(value) <= MAX_ID):
            return f"header {key!r} is not a short string"
    for key in _HEADER_REPR:
        value = headers.get(key)
        if value is not None and not (isinstance(value, str) and len(value) <= MAX_REPR):
            return f"header {key!r} is not a string of at most {MAX_REPR} characters"
    retries = headers.get("retries")
    if retries is not None and not (type(retries) is int and 0 <= retries <= _MAX_RUN):
        return "header 'retries' is not a count"
    limits = headers.get("timelimit")
    if limits is not None:
        if not (isinstance(limits, list | tuple) and len(limits) == 2):
            return "header 'timelimit' is not [soft, hard]"
        for value in limits:
            # DOX's own limits are whole seconds ≥ 1 (canvas.soft_limit); a forged 0.004 s one
            # would fire inside the runner's bookkeeping instead of the step.
            if not (value is None or (type(value) in (int, float) and 1 <= value <= max_time_limit)):
                return f"its time limits are not between 1 s and WORKFLOW_TIMEOUT={max_time_limit:g}s"
    for key in ("eta", "expires"):
        value = headers.get(key)
        if value is None:
            continue
        if intake:
            return f"header {key!r} is set (a submission runs now)"
        when = _instant(value)
        if when is None:
            return f"header {key!r} is not an ISO 8601 time"
        if key == "eta" and when - datetime.now(UTC) > timedelta(seconds=max_eta_s):
            return "its ETA lies beyond the broker's visibility timeout (it would be delivered twice)"
    return None


def _instant(value: Any) -> datetime | None:
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _arguments(task: str, args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """The arguments DOX's own senders write, for the tasks whose shape is fixed."""
    if is_step_task(task):
        if kwargs or len(args) != 4:
            return "a step message carries exactly (workflow_id, step, definition_hash, run)"
        workflow_id, step, digest, run = args
        if not (isinstance(workflow_id, str) and _WORKFLOW_ID.fullmatch(workflow_id)):
            return "its workflow id is not an id"
        if not (isinstance(step, str) and _STEP.fullmatch(step)):
            return "its step is not a step name"
        if not (isinstance(digest, str) and _HEX64.fullmatch(digest)):
            return "its definition hash is not a SHA-256"
        if not (type(run) is int and 1 <= run <= _MAX_RUN):
            return "its run is not a run number"
    elif task == "dox.sync.probe":
        if kwargs or len(args) != 2 or not all(isinstance(a, str) and len(a) <= MAX_ID for a in args):
            return "a probe message carries exactly (workflow_id, service)"
    elif task == "dox.sync.collect":
        if kwargs or len(args) != 1 or not isinstance(args[0], str) or len(args[0]) > MAX_ID:
            return "a collect message carries exactly (workflow_id,)"
    elif task == "celery.chord_unlock":
        body = args[1] if len(args) > 1 else kwargs.get("callback")
        if not (isinstance(body, dict) and body.get("task") == "dox.sync.collect"):
            return "a chord_unlock may only finish the team sync (its body must be dox.sync.collect)"
    return None
