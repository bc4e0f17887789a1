"""``dox`` — the command line for people and scripts.

Every command prints a one-line error and exits non-zero on bad input; a
traceback never reaches the user (``DOX_DEBUG=1`` shows it). ``--json`` output is
one object per line, in the contract's field names.

This module holds the ``dox`` group and adds each command module's commands to it;
the modules share :mod:`.common` and never import one another.
"""

from __future__ import annotations

import logging

import click

from ..logs import basic
from . import api, apikeys, db, defs, documents, intake, jobs, monitoring, run, worker, workflows
from .common import run_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", "-v", is_flag=True, help="log what workers do")
def cli(verbose: bool) -> None:
    """DOX: validate, scan, store and recognize documents with Celery."""
    basic(logging.INFO if verbose else logging.WARNING)


COMMANDS: tuple[click.Command, ...] = (
    run.run,
    run.submit_cmd,
    run.status,
    workflows.workflows,
    intake.intake,
    documents.quarantine,
    documents.documents,
    defs.defs,
    jobs.schedule_cmd,
    jobs.beat,
    jobs.jobs,
    jobs.sync,
    jobs.backup,
    monitoring.flower,
    monitoring.health_cmd,
    monitoring.metrics,
    monitoring.report_cmd,
    db.db,
    apikeys.apikeys,
    api.api,
    worker.worker,
)

for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    """The ``dox`` console script (and ``python -m dox_tasks.cli``)."""
    run_group(cli)
