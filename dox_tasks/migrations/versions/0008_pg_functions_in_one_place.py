"""Every DOX PostgreSQL function's current body, in one place (no change in behaviour).

The step transitions run as PL/pgSQL functions (see ``dox_tasks/db/postgres.py``),
but their bodies had come to be spread over four migrations: ``dox_finish_step``
was still the one 0002 wrote, ``dox_conclude`` 0005's, ``dox_begin_step`` and
``dox_step_begin`` 0006's. This revision redefines each of them (CREATE OR REPLACE)
with exactly the SQL those migrations left in the database, so a reader finds what
runs here. The SQL is frozen in this file, like every migration's: it is never
loaded from a live file, which would change what a fresh ``upgrade head`` builds.

A later migration that changes one of these functions should again redefine all of
them (copy this file's pattern); ``tests/test_pg_functions.py`` fails when the
functions in a database at head differ from the ones the newest such migration
defines, or when a ``dox_*`` function exists that it does not define.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# Counts one delivery of a step (called by dox_step_begin): refuses a message naming
# another definition or run, a workflow that ended, a stale delivery, an overlapping one
# (busy_for); marks dead attempts lost; inserts the attempt (failed when past the budget).
# Body as migration 0006 wrote it.
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

# StateStore.begin_step: dox_begin_step, then the workflow row and (for the last step)
# the earlier steps' outputs, in the same statement.
# Body as migration 0006 wrote it.
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

# StateStore.finish_step: close one attempt; a success or rejection moves the workflow
# to the next step unless another delivery did (then this attempt is superseded).
# Body as migration 0002 wrote it.
FINISH_STEP = r"""
CREATE OR REPLACE FUNCTION dox_finish_step(p_wid text, p_step text, p_attempt int, p_state text,
                                           p_next text, p_output text, p_error text, p_tb text,
                                           p_started timestamptz)
RETURNS text LANGUAGE plpgsql AS $fn$
DECLARE
  ts timestamptz := clock_timestamp();
  final text := p_state;
  started timestamptz := p_started;
BEGIN
  IF p_state IN ('success', 'rejected') THEN
    UPDATE workflow_states SET current_step = p_next, updated_at = ts
     WHERE workflow_id = p_wid AND current_step = p_step AND current_state IN ('queued', 'running');
    IF NOT FOUND THEN
      final := 'superseded';  -- another delivery of this step got there first
    END IF;
  END IF;
  IF started IS NULL THEN
    SELECT started_at INTO started FROM workflow_step_results
     WHERE workflow_id = p_wid AND step = p_step AND attempt = p_attempt;
  END IF;
  UPDATE workflow_step_results
     SET state = final, finished_at = ts,
         duration_ms = (extract(epoch FROM ts - started) * 1000)::int,
         output = p_output::json, error = p_error, traceback = p_tb
   WHERE workflow_id = p_wid AND step = p_step AND attempt = p_attempt;
  RETURN final;
END
$fn$;
"""

# StateStore.conclude: end the workflow if this delivery still owns its step, close the
# last attempt (superseded if it lost), write the event rows; the first writer wins.
# Body as migration 0005 wrote it.
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

#: Every DOX function, by name: its CREATE statement.
FUNCTIONS: dict[str, str] = {
    "dox_begin_step": BEGIN_STEP,
    "dox_step_begin": STEP_BEGIN,
    "dox_finish_step": FINISH_STEP,
    "dox_conclude": CONCLUDE,
}


def _run_raw(sql: str) -> None:
    # Through the driver's own cursor: the bodies contain % and : that a
    # parameter-aware layer would try to interpret.
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    cursor = driver.cursor()
    cursor.execute(sql)
    cursor.close()


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for create in FUNCTIONS.values():
        _run_raw(create)


def downgrade() -> None:
    # Nothing to undo: each body above is byte for byte the one revision 0007 left in
    # place (0002, 0005 and 0006 wrote them), so the database at 0007 runs these very
    # functions. Dropping them here would break 0007.
    pass
