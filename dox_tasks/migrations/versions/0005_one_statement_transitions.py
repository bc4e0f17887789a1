"""Step transitions as one statement each (PostgreSQL).

A step used to cost BEGIN, the counting function, a read of the workflow row and
COMMIT (four round trips), and the terminal path three more transactions (read the
row, read the outputs, write). Each transition is now one function call run in
autocommit mode, which is itself one transaction:

* ``dox_step_begin`` — ``dox_begin_step`` plus the workflow row as it stands after
  the count, and (for the last step) the outputs of the steps before it;
* ``dox_conclude`` — the terminal transition: end the workflow if this delivery still
  owns it, close its last attempt, insert the event rows.

Revision ID: 0005
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STEP_BEGIN = r"""
CREATE OR REPLACE FUNCTION dox_step_begin(p_wid text, p_step text, p_task text, p_host text, p_max int,
                                          p_hold int, p_outputs boolean)
RETURNS TABLE(run boolean, attempt int, why text, poison boolean, done_before boolean, started timestamptz,
              busy_for int, try_no int, wf json, outputs json)
LANGUAGE plpgsql AS $fn$
DECLARE
  b record;
BEGIN
  SELECT * INTO b FROM dox_begin_step(p_wid, p_step, p_task, p_host, p_max, p_hold);
  RETURN QUERY SELECT b.run, b.attempt, b.why, b.poison, b.done_before, b.started, b.busy_for, b.try_no,
    (SELECT row_to_json(w) FROM workflow_states w WHERE w.workflow_id = p_wid),
    CASE WHEN p_outputs AND b.run THEN
      (SELECT json_object_agg(o.step, coalesce(o.output, '{}'::json))
         FROM (SELECT DISTINCT ON (r.step) r.step, r.output FROM workflow_step_results r
                WHERE r.workflow_id = p_wid AND r.state IN ('success', 'rejected')
                ORDER BY r.step, r.id DESC) o)
    END;
END
$fn$;
"""

CONCLUDE = r"""
CREATE OR REPLACE FUNCTION dox_conclude(p_wid text, p_state text, p_step text, p_reason text, p_detail text,
                                        p_dup text, p_result text, p_events text, p_attempt int,
                                        p_close_state text, p_output text, p_error text, p_tb text,
                                        p_started timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
  ts timestamptz := clock_timestamp();
  won boolean;
BEGIN
  -- Only a delivery that still owns the workflow's current step may end it.
  UPDATE workflow_states
     SET current_state = p_state, current_step = NULL, reason = p_reason, detail = p_detail,
         duplicate_of = p_dup, result = p_result::json, updated_at = ts, finished_at = ts
   WHERE workflow_id = p_wid AND current_state IN ('queued', 'running')
     AND (p_step IS NULL OR current_step = p_step);
  won := FOUND;
  IF p_attempt IS NOT NULL THEN
    UPDATE workflow_step_results
       SET state = CASE WHEN won THEN p_close_state ELSE 'superseded' END, finished_at = ts,
           duration_ms = (extract(epoch FROM ts - p_started) * 1000)::int,
           output = p_output::json, error = p_error, traceback = p_tb
     WHERE workflow_id = p_wid AND step = p_step AND attempt = p_attempt;
  END IF;
  IF won THEN
    INSERT INTO workflow_events(id, workflow_id, type, payload, created_at)
    SELECT e->>'id', p_wid, e->>'type', e->'payload', ts FROM json_array_elements(p_events::json) e
    ON CONFLICT DO NOTHING;
  END IF;
  RETURN won;
END
$fn$;
"""


def _run_raw(sql: str) -> None:
    # The same driver-cursor helper as 0002 (function bodies contain % and :).
    importlib.import_module("dox_tasks.migrations.versions.0002_pg_step_functions")._run_raw(sql)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _run_raw(STEP_BEGIN)
    _run_raw(CONCLUDE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _run_raw("DROP FUNCTION IF EXISTS dox_step_begin(text, text, text, text, int, int, boolean)")
    _run_raw(
        "DROP FUNCTION IF EXISTS dox_conclude(text, text, text, text, text, text, text, text, int, text, text,"
        " text, text, timestamptz)"
    )
