"""Start one run of a scheduled job: the row first (claiming its slot), then the message.

The unique (rule_name, schedule_slot) pair in ``workflow_states`` is the whole
exactly-once guarantee: two Beats, a Beat and an operator, or a forged message
cannot start a second run for the same slot, because the second INSERT fails.
A row whose message is lost (Redis flushed between the two) is the reaper's to
re-drive, exactly like a document workflow.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import UTC, datetime

from ..db.store import NewWorkflow
from ..errors import SubmissionError
from ..intake import save_snapshot, send
from ..runtime import Runtime
from .slots import manual_key


@dataclass(frozen=True)
class Launch:
    workflow_id: str
    slot: str
    created: bool  # False: this slot already had a run (returned instead)


def start_run(rt: Runtime, name: str, slot: str, *, actor: str = "beat") -> Launch:
    definition = rt.definitions.get(name)
    if definition is None or definition.model.trigger.type != "schedule":
        scheduled = sorted(n for n, d in rt.definitions.items() if d.model.trigger.type == "schedule")
        raise SubmissionError(f"unknown scheduled job {name!r}: known are {', '.join(scheduled)}")
    save_snapshot(rt, definition)
    workflow_id, created = rt.state.create_workflow(
        NewWorkflow(
            rule_name=name,
            definition_hash=definition.digest,
            definition_version=definition.model.version,
            first_step=definition.ordered_steps()[0].name,
            user=actor,
            source="beat" if actor == "beat" else "manual",
            schedule_slot=slot,
        )
    )
    if created:
        send(rt, name, workflow_id, definition=definition)
    return Launch(workflow_id, slot, created)


def run_now(rt: Runtime, name: str, actor: str | None = None) -> Launch:
    """A manual run (``dox sync run``): its own ``manual:<time>`` slot, never a cron slot."""
    return start_run(rt, name, manual_key(datetime.now(UTC)), actor=actor or getpass.getuser())
