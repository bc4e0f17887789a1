"""The FastAPI application: routes, the key check, problem documents, the OpenAPI document.

Built by :func:`create_app` from one :class:`~dox_tasks.settings.Settings` (uvicorn calls it as
a factory in every worker process), so a test can build one against its own database. The
OpenAPI 3.1 document is ``/api/v1/openapi.json`` with its page at ``/api/v1/docs``;
``DOX_API_DOCS=off`` serves neither.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..apilimits import ApiLimits
from ..errors import ConfigError
from ..logs import basic, log_to_file
from ..runtime import Runtime
from ..settings import Settings, is_loopback, load
from . import events, probes, problems, routes, uploads, workflows
from .auth import Authenticator, UsageCounter, security
from .edge import Edge

OPENAPI_URL = "/api/v1/openapi.json"
DOCS_URL = "/api/v1/docs"


#: The seed's API_KEY acts with every scope: it must be a real secret.
MIN_OPERATOR_KEY = 32


def check_auth_setting(settings: Settings, host: str) -> None:
    """REQUIRE_AUTH=false is for a machine nobody else can reach: refused on any other address.
    API_KEY, when set, must be a key a client can send and nobody can guess."""
    if not settings.require_auth and not is_loopback(host):
        raise ConfigError(
            f"REQUIRE_AUTH=false lets anyone call the API: refused on {host};"
            " listen on 127.0.0.1 or require API keys"
        )
    key = settings.api_key.get_secret_value() if settings.api_key else ""
    if key and (
        len(key) < MIN_OPERATOR_KEY or not key.isascii() or key != key.strip() or not key.isprintable()
    ):
        raise ConfigError(
            f"API_KEY must be at least {MIN_OPERATOR_KEY} printable ASCII characters without surrounding"
            " spaces (it acts with every scope); e.g. `openssl rand -hex 32`"
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load()
    rt = Runtime(settings)
    usage = UsageCounter(rt.state)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def flush_regularly() -> None:  # an idle server still writes what it counted
            while True:
                await asyncio.sleep(usage.every_s)
                await asyncio.to_thread(usage.flush)

        flusher = asyncio.create_task(flush_regularly())
        yield
        flusher.cancel()
        usage.flush()
        await limits.close()
        rt.close()

    docs = settings.api_docs
    app = FastAPI(
        title="DOX",
        summary="Document workflows: submit, follow and fetch results.",
        version="1",
        openapi_url=OPENAPI_URL if docs else None,
        docs_url=DOCS_URL if docs else None,
        redoc_url=None,
        # No redirect to the same path with a slash added or removed: its Location would be
        # built from the request's Host header, before any key is checked.
        redirect_slashes=False,
        lifespan=lifespan,
    )
    app.state.runtime = rt
    app.state.usage = usage
    per_min = settings.api_rate_per_min, settings.api_auth_failures_per_min
    limits = ApiLimits(settings.redis or None, settings.namespace, *per_min)
    app.state.authenticate = Authenticator(settings, rt.state, usage, limits)
    basic()
    if settings.log_dir:
        log_to_file(security, settings.log_dir / "auth.log")
    problems.install(app)
    app.add_middleware(Edge, settings=settings)
    app.include_router(uploads.router)  # first: the busiest routes are matched first
    app.include_router(probes.router)
    app.include_router(workflows.router)
    app.include_router(routes.router)
    app.include_router(events.router)
    return app
