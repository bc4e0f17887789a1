"""``dox api serve``: DOX's HTTP API under uvicorn.

The API needs the real services (a broker and PostgreSQL): it is for a deployment, so it
refuses to start without them and points to ``dox run`` for a try-out. It refuses
REQUIRE_AUTH=false unless it listens on a loopback address.
"""

from __future__ import annotations

import click
import uvicorn

from ..api.app import check_auth_setting
from ..settings import load


@click.group()
def api() -> None:
    """DOX's HTTP API."""


@api.command("serve")
@click.option("--host", default=None, help="address to listen on [default: DOX_API_HOST, else 127.0.0.1]")
@click.option("--port", type=int, default=None, help="port [default: DOX_API_PORT, else 5000]")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="server processes")
def serve(host: str | None, port: int | None, workers: int) -> None:
    """Serve the API (health, readiness, workflows) until interrupted."""
    settings = load()
    missing = [
        name
        for name, given in (
            ("DOX_BROKER_URL", not settings.embedded),
            ("DOX_DATABASE_URL", settings.database_url),
        )
        if not given
    ]
    if missing:
        raise click.ClickException(
            f"the API needs a broker and a PostgreSQL database: set {' and '.join(missing)}"
            " (for a try-out without servers, use `dox run`)"
        )
    host = host or settings.api_host
    check_auth_setting(settings, host)
    uvicorn.run(
        "dox_tasks.api.app:create_app",
        factory=True,
        host=host,
        port=port or settings.api_port,
        workers=workers,
        # httptools with a bound on the request head (uvicorn sets none): api/protocol.py.
        http="dox_tasks.api.protocol:BoundedHttpTools",
        proxy_headers=False,
        server_header=False,
        log_level="info",
    )
