"""Step messages are requests: the definition hash and run they name must be the workflow's.

A step message carries ``(workflow_id, step, definition hash, run)``. Before this
revision only the step was compared with the workflow's row, so a forged message
naming another definition (whose step runs another task) or an earlier run could
act on the workflow. ``dox_begin_step`` and ``dox_step_begin`` now take the hash
and run from the message and refuse a mismatch *before* counting anything, so a
forged message can neither run a body nor use up the real delivery's budget.
The versions without these parameters are dropped.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import importlib

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BEGIN_STEP = r"""CREATE OR REPLACE FUNCTION dox_begin_step(p_wid text, p_step text, p_task text, p_host text, p_max int,
                                          p_hold int, p_digest text, p_run int)
RETURNS TABLE(run boolean, attempt int, why text, poison boolean, done_before boolean, started timestamptz,
              busy_for int, try_no int)
LANGUAGE plpgsql AS $fn$
DECLARE
  wf workflow_states%ROWTYPE;
  n int;
  in_run int;
  has_running boolean;
  has_success boolean;
  stale boolean;
  young timestamptz;
  ts timestamptz := clock_timestamp();
BEGIN
  -- Losing this commit in a crash only undercounts one delivery; skip the WAL flush wait.
  PERFORM set_config('synchronous_commit', 'off', true);
  SELECT * INTO wf FROM workflow_states WHERE workflow_id = p_wid FOR UPDATE;
  IF NOT FOUND THEN
    RETURN QUERY SELECT false, 0, 'unknown workflow (forged message?)'::text, false, false, NULL::timestamptz, 0,
      0;
    RETURN;
  END IF;
  -- A message is a request: it must name the workflow's own definition and current run,
  -- or it is refused before anything is counted (a forged message cannot use up a budget).
  IF wf.definition_hash IS DISTINCT FROM p_digest THEN
    RETURN QUERY SELECT false, 0, format('message names definition %s, the workflow runs %s (forged?)',
      left(p_digest, 12), left(wf.definition_hash, 12)), false, false, NULL::timestamptz, 0, 0;
    RETURN;
  END IF;
  IF wf.run IS DISTINCT FROM p_run THEN
    RETURN QUERY SELECT false, 0, format('delivery of run %s, workflow is at run %s (stale)', p_run, wf.run),
      false, false, NULL::timestamptz, 0, 0;
    RETURN;
  END IF;
  -- One pass over this step's attempts answers every question below.
  SELECT coalesce(max(r.attempt), 0), count(*) FILTER (WHERE r.run = wf.run),
         coalesce(bool_or(r.state = 'running'), false),
         coalesce(bool_or(r.state = 'success' AND r.run = wf.run), false),
         coalesce(bool_or(r.task_id = p_task AND r.run < wf.run), false),
         max(r.started_at) FILTER (WHERE r.state = 'running' AND r.started_at > ts - make_interval(secs => p_hold))
    INTO n, in_run, has_running, has_success, stale, young
    FROM workflow_step_results r WHERE r.workflow_id = p_wid AND r.step = p_step;
  IF wf.current_state NOT IN ('queued', 'running') THEN
    RETURN QUERY SELECT false, 0, 'workflow is already ' || wf.current_state, false, has_success,
      NULL::timestamptz, 0, 0;
    RETURN;
  END IF;
  -- A delivery of an earlier run (a countdown retry or redelivery keeps its task id)
  -- must not act on the run an operator started since.
  IF stale THEN
    RETURN QUERY SELECT false, 0, format('delivery of run %s, workflow is at run %s (stale)',
      wf.run - 1, wf.run), false, has_success, NULL::timestamptz, 0, 0;
    RETURN;
  END IF;
  IF wf.current_step IS DISTINCT FROM p_step THEN
    RETURN QUERY SELECT false, 0,
      format('workflow is at step %L, not %L (stale)', wf.current_step, p_step), false, has_success,
      NULL::timestamptz, 0, 0;
    RETURN;
  END IF;
  IF has_running THEN
    -- A running attempt younger than the step's time limit may still be alive (an
    -- overlapping delivery): wait rather than run the step twice at once.
    IF young IS NOT NULL THEN
      RETURN QUERY SELECT false, 0, 'another delivery of this step is still running'::text, false, has_success,
        NULL::timestamptz, greatest(1, ceil(extract(epoch FROM young + make_interval(secs => p_hold) - ts)))::int,
        0;
      RETURN;
    END IF;
    -- Older than the time limit: it belongs to a worker that died holding it.
    UPDATE workflow_step_results SET state = 'lost', finished_at = ts, error = 'worker lost (message redelivered)'
     WHERE workflow_id = p_wid AND step = p_step AND state = 'running';
  END IF;
  n := n + 1;
  in_run := in_run + 1;
  IF in_run > p_max THEN
    INSERT INTO workflow_step_results(workflow_id, step, attempt, run, task_id, worker_hostname, started_at,
                                      state, finished_at, error)
    VALUES (p_wid, p_step, n, wf.run, p_task, p_host, ts, 'failed', ts,
            format('delivered %s times (limit %s)', in_run, p_max));
    RETURN QUERY SELECT false, n, format('delivered %s times (limit %s)', in_run, p_max), true, has_success,
      ts, 0, in_run;
    RETURN;
  END IF;
  INSERT INTO workflow_step_results(workflow_id, step, attempt, run, task_id, worker_hostname, started_at, state)
  VALUES (p_wid, p_step, n, wf.run, p_task, p_host, ts, 'running');
  IF wf.current_state <> 'running' THEN
    UPDATE workflow_states SET current_state = 'running', updated_at = ts WHERE workflow_id = p_wid;
  END IF;
  RETURN QUERY SELECT true, n, ''::text, false, has_success, ts, 0, in_run;
END
$fn$;
"""

STEP_BEGIN = r"""CREATE OR REPLACE FUNCTION dox_step_begin(p_wid text, p_step text, p_task text, p_host text, p_max int,
                                          p_hold int, p_outputs boolean, p_digest text, p_run int)
RETURNS TABLE(run boolean, attempt int, why text, poison boolean, done_before boolean, started timestamptz,
              busy_for int, try_no int, wf json, outputs json)
LANGUAGE plpgsql AS $fn$
DECLARE
  b record;
BEGIN
  SELECT * INTO b FROM dox_begin_step(p_wid, p_step, p_task, p_host, p_max, p_hold, p_digest, p_run);
  RETURN QUERY SELECT b.run, b.attempt, b.why, b.poison, b.done_before, b.started, b.busy_for, b.try_no,
    (SELECT row_to_json(w) FROM workflow_states w WHERE w.workflow_id = p_wid),
    CASE WHEN p_outputs AND b.run THEN
      (SELECT json_object_agg(o.step, CASE WHEN json_typeof(o.output) = 'object' THEN o.output
                                      ELSE '{}'::json END)
         FROM (SELECT DISTINCT ON (r.step) r.step, r.output FROM workflow_step_results r
                WHERE r.workflow_id = p_wid AND r.state IN ('success', 'rejected')
                ORDER BY r.step, r.id DESC) o)
    END;
END
$fn$;
"""

OLD_BEGIN_STEP = "dox_begin_step(text, text, text, text, int, int)"
OLD_STEP_BEGIN = "dox_step_begin(text, text, text, text, int, int, boolean)"
NEW_BEGIN_STEP = "dox_begin_step(text, text, text, text, int, int, text, int)"
NEW_STEP_BEGIN = "dox_step_begin(text, text, text, text, int, int, boolean, text, int)"


def _run_raw(sql: str) -> None:
    # The same driver-cursor helper as 0002 (function bodies contain % and :).
    importlib.import_module("dox_tasks.migrations.versions.0002_pg_step_functions")._run_raw(sql)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _run_raw(f"DROP FUNCTION IF EXISTS {OLD_STEP_BEGIN}")
    _run_raw(f"DROP FUNCTION IF EXISTS {OLD_BEGIN_STEP}")
    _run_raw(BEGIN_STEP)
    _run_raw(STEP_BEGIN)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _run_raw(f"DROP FUNCTION IF EXISTS {NEW_STEP_BEGIN}")
    _run_raw(f"DROP FUNCTION IF EXISTS {NEW_BEGIN_STEP}")
    previous = importlib.import_module("dox_tasks.migrations.versions.0005_one_statement_transitions")
    _run_raw(previous.BEGIN_STEP)
    _run_raw(previous.STEP_BEGIN)
