"""The StateStore on PostgreSQL: each hot-path transition is one PL/pgSQL function call.

Every step delivery makes two or three of these calls, each one autocommit
statement over the held connection of :class:`~.direct.DirectConnection` (one round
trip, no statement built per call). The server-side functions it calls, whose
current bodies all stand in ``migrations/versions/0008_pg_functions_in_one_place.py``
(``tests/test_pg_functions.py`` checks that the database runs exactly those):

``dox_step_begin(wid, step, task, host, max, hold, outputs, digest, run)``
    :meth:`PostgresStateStore.begin_step`: ``dox_begin_step`` plus the workflow row
    as it stands after the count and, for the last step, the earlier outputs
    (first written in 0005; the message checks since 0006).
``dox_begin_step(wid, step, task, host, max, hold, digest, run)``
    the count itself, called by ``dox_step_begin`` only (body last changed in 0006).
``dox_finish_step(wid, step, attempt, state, next, output, error, tb, started)``
    :meth:`PostgresStateStore.finish_step` (body unchanged since 0002).
``dox_conclude(wid, state, step, reason, detail, dup, result, events, attempt,
close_state, output, error, tb, started)``
    :meth:`PostgresStateStore.conclude` (body unchanged since 0005).

A new workflow row is one ``INSERT … ON CONFLICT DO NOTHING`` over the same
connection. :meth:`~.base.StateStore.reopen` and the reads are the shared
SQLAlchemy code (:mod:`.base`); ``reopen`` locks the row it changes.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import DateTime, Select

from ..contract import StepState
from .base import SEL_WF_LOCKED, Conclusion, StateStore, StepClose, StepDelivery, StepStart, clip_traceback
from .direct import DirectConnection
from .tables import WS

_PG_BEGIN = "SELECT * FROM dox_step_begin(%s, %s, %s, %s, %s, %s, %s, %s, %s)"
_PG_FINISH = "SELECT dox_finish_step(%s, %s, %s, %s, %s, %s, %s, %s, %s)"
_PG_CONCLUDE = "SELECT dox_conclude(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
_PG_INSERT_WF = (
    "INSERT INTO workflow_states (workflow_id, rule_name, definition_hash, definition_version, current_state,"
    " current_step, user_id, user_display, source, file_name, sha256, size, idempotency_key, metadata,"
    " created_at, updated_at, schedule_slot) VALUES (%(workflow_id)s, %(rule_name)s, %(definition_hash)s,"
    " %(definition_version)s, %(current_state)s, %(current_step)s, %(user_id)s, %(user_display)s,"
    " %(source)s, %(file_name)s,"
    " %(sha256)s, %(size)s, %(idempotency_key)s, %(metadata)s, %(created_at)s, %(updated_at)s,"
    " %(schedule_slot)s) ON CONFLICT DO NOTHING RETURNING workflow_id"
)
_WF_TIMES = [c.name for c in WS.columns if isinstance(c.type, DateTime)]
#: conclude without an attempt to close: a NULL attempt makes dox_conclude close nothing.
_NO_CLOSE = StepClose("", 0, StepState.FAILED)


class PostgresStateStore(StateStore):
    _sel_for_update: ClassVar[Select[Any]] = SEL_WF_LOCKED
    is_postgres: ClassVar[bool] = True

    def __init__(self, url: str, pool_size: int = 2):
        super().__init__(url, pool_size)
        self.direct = DirectConnection(self.engine)

    def dispose(self) -> None:
        self.direct.forget()
        super().dispose()

    def close(self) -> None:
        self.direct.close()
        super().close()

    def _insert_workflow(self, values: dict[str, Any]) -> bool:
        params = {**values, "metadata": json.dumps(values["metadata"])}
        return self.direct.call(_PG_INSERT_WF, params) is not None

    def begin_step(self, delivery: StepDelivery) -> StepStart:
        d = delivery
        row = self.direct.call(
            _PG_BEGIN,
            (
                d.workflow_id,
                d.step,
                d.task_id,
                d.hostname,
                d.max_deliveries,
                d.hold_s,
                d.with_outputs,
                *d.expect,
            ),
        )
        assert row is not None
        run, attempt, why, poison, done_before, started, busy_for, try_no, wf, outputs = row
        if wf is not None:
            for name in _WF_TIMES:  # JSON carries timestamps as text
                if wf.get(name) is not None:
                    wf[name] = datetime.fromisoformat(wf[name])
        return StepStart(
            bool(run),
            attempt=int(attempt),
            why=str(why or ""),
            poison=bool(poison),
            workflow=wf,
            started_at=started,
            done_before=bool(done_before),
            busy_for=int(busy_for or 0),
            try_no=int(try_no or 0),
            outputs=outputs if run and d.with_outputs else None,
        )

    def finish_step(self, workflow_id: str, close: StepClose, next_step: str | None = None) -> bool:
        c = close
        out = None if c.output is None else json.dumps(c.output)
        tb = clip_traceback(c.traceback)
        row = self.direct.call(
            _PG_FINISH,
            (workflow_id, c.step, c.attempt, c.state.value, next_step, out, c.error, tb, c.started_at),
        )
        return row is not None and row[0] == c.state.value

    def conclude(self, workflow_id: str, end: Conclusion) -> bool:
        rows = [
            {"id": event_id, "type": type_, "payload": payload} for event_id, type_, payload in end.events
        ]
        c = end.close or _NO_CLOSE
        row = self.direct.call(
            _PG_CONCLUDE,
            (
                workflow_id,
                end.state.value,
                end.step,
                end.reason,
                end.detail,
                end.duplicate_of,
                json.dumps(end.result),
                json.dumps(rows),
                c.attempt if end.close else None,
                c.state.value,
                None if c.output is None else json.dumps(c.output),
                c.error,
                clip_traceback(c.traceback),
                c.started_at,
            ),
        )
        return bool(row and row[0])
