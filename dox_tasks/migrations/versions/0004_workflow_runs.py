"""Workflow runs (an operator retry starts run 2, 3, … of the same workflow) and
the metric archive.

``workflow_states.run`` is the workflow's current run (``run_started_at`` when an
operator started it, so a run's duration is its own); each step attempt records
the run it belongs to. Attempt numbers keep counting per (workflow, step) — the
primary key and the history stay as they were — but the delivery budget that
turns a looping message into ``poison`` counts only the current run's attempts,
so a retried step gets its full budget again. ``dox_begin_step`` is redefined
accordingly and also returns ``try_no``, the delivery's number within the run
(what the retry policy counts).

``metric_totals`` keeps the counter series of rows that retention deleted, so the
metrics exporter's counters, derived from rows, never go down.

Revision ID: 0004
Revises: 0003
"""

import importlib

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DROP_BEGIN_STEP = "DROP FUNCTION IF EXISTS dox_begin_step(text, text, text, text, int, int)"

BEGIN_STEP = r"""
CREATE OR REPLACE FUNCTION dox_begin_step(p_wid text, p_step text, p_task text, p_host text, p_max int,
                                          p_hold int)
RETURNS TABLE(run boolean, attempt int, why text, poison boolean, done_before boolean, started timestamptz,
              busy_for int, try_no int)
LANGUAGE plpgsql AS $fn$
DECLARE
  wf workflow_states%ROWTYPE;
  n int;
  in_run int;
  has_running boolean;
  has_success boolean;
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
  SELECT coalesce(max(r.attempt), 0), count(*) FILTER (WHERE r.run = wf.run),
         coalesce(bool_or(r.state = 'running'), false),
         coalesce(bool_or(r.state = 'success' AND r.run = wf.run), false)
    INTO n, in_run, has_running, has_success
    FROM workflow_step_results r WHERE r.workflow_id = p_wid AND r.step = p_step;
  IF wf.current_state NOT IN ('queued', 'running') THEN
    RETURN QUERY SELECT false, 0, 'workflow is already ' || wf.current_state, false, has_success,
      NULL::timestamptz, 0, 0;
    RETURN;
  END IF;
  -- A delivery of an earlier run (a countdown retry or redelivery keeps its task id)
  -- must not act on the run an operator started since.
  IF p_task IS NOT NULL AND EXISTS (SELECT 1 FROM workflow_step_results r WHERE r.workflow_id = p_wid
        AND r.step = p_step AND r.task_id = p_task AND r.run < wf.run) THEN
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
    SELECT max(r.started_at) INTO young FROM workflow_step_results r
     WHERE r.workflow_id = p_wid AND r.step = p_step AND r.state = 'running'
       AND r.started_at > ts - make_interval(secs => p_hold);
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


def _run_raw(sql: str) -> None:
    # The same driver-cursor helper as 0002 (function bodies contain % and :).
    importlib.import_module("dox_tasks.migrations.versions.0002_pg_step_functions")._run_raw(sql)


def upgrade() -> None:
    with op.batch_alter_table("workflow_states") as batch:
        batch.add_column(sa.Column("run", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("run_started_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("workflow_step_results") as batch:
        batch.add_column(sa.Column("run", sa.Integer(), nullable=False, server_default="1"))
    op.create_table(
        "metric_totals",
        sa.Column("metric", sa.String(length=100), nullable=False),
        sa.Column("labels", sa.String(length=500), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "labels"),
    )
    if op.get_bind().dialect.name == "postgresql":
        _run_raw(DROP_BEGIN_STEP)  # its result type changes: CREATE OR REPLACE cannot do that
        _run_raw(BEGIN_STEP)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        previous = importlib.import_module("dox_tasks.migrations.versions.0002_pg_step_functions")
        _run_raw(DROP_BEGIN_STEP)
        _run_raw(previous.BEGIN_STEP)
    op.drop_table("metric_totals")
    with op.batch_alter_table("workflow_step_results") as batch:
        batch.drop_column("run")
    with op.batch_alter_table("workflow_states") as batch:
        batch.drop_column("run_started_at")
        batch.drop_column("run")
