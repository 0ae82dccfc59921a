"""The FastAPI application: its routes, the page, errors as JSON, the token and CORS."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.cors import CORSMiddleware

from consumer.api import browse, letters
from consumer.api import operators as operator_routes
from consumer.api.requests import Accounting
from consumer.api.routes import InvalidParameterError, router
from consumer.api.security import (
    OPEN_PATHS,
    OPERATOR_PATHS,
    AllowedHosts,
    BearerToken,
    OperatorGuard,
    SecurityHeaders,
)
from consumer.api.state import ApiState
from consumer.errors import (
    BrokerError,
    DatabaseUnavailableError,
    InvalidCursorError,
    NotMigratedError,
    StoreError,
)
from consumer.schema import CONTEXT_TYPE_NAME, ENTRY_NAME
from consumer.settings import Settings

log = structlog.get_logger()
STATIC = Path(__file__).parent / "static"
TITLE = "Task build history"
STARTUP_WAIT_SECONDS = 5


def create_app(settings: Settings) -> FastAPI:
    """The API for `settings`: routes, the page, token and CORS as the settings say."""
    state = ApiState(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Normally the store is open by now (the server's startup opened it) or the database
        # answers at once: serve only then, so the first requests find it. A database still
        # away is waited for in the background (/readyz says 503 meanwhile).
        connecting = asyncio.create_task(state.connect())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.connected.wait(), STARTUP_WAIT_SECONDS)
        try:
            yield
        finally:
            state.feeds.close()
            connecting.cancel()
            await asyncio.gather(connecting, return_exceptions=True)
            await state.close()

    app = FastAPI(
        title=TITLE,
        version=_version(),
        description=(
            "The build history of tasks: pages of entries, new entries live as Server-Sent"
            " Events, recent tasks, and the dead letters"
            + (
                "; with the operator token, their replay and purge, every one on the record."
                if settings.api_operator_token is not None
                else ". Read-only."
            )
        ),
        lifespan=lifespan,
        # The interactive docs load scripts from a CDN: nothing outside loads here.
        docs_url=None,
        redoc_url=None,
    )
    app.state.api = state
    operators = settings.api_operator_token is not None
    app.openapi = lambda: _openapi(  # type: ignore[method-assign]
        app, token=settings.api_token is not None, operators=operators
    )
    # Before `router`: its /dead-letters/{key} would take /dead-letters/letters for a key.
    app.include_router(letters.router)
    if operators:
        app.include_router(operator_routes.router)
    app.include_router(browse.router)
    app.include_router(router)
    _add_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        # Behind the token when one is set, like every route but the health checks.
        await state.count_dead_letters()
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # Middleware added last runs first: the accounting sees every answer, refusals included;
    # the security headers go on every answer; the Host is checked before anything is read.
    token, operator_token = settings.api_token, settings.api_operator_token
    if operator_token is not None:
        app.add_middleware(OperatorGuard)  # inside BearerToken: it reads whose token it was
    if token is not None or operator_token is not None:
        app.add_middleware(
            BearerToken,
            token=None if token is None else token.get_secret_value(),
            operator_token=None if operator_token is None else operator_token.get_secret_value(),
        )
    if settings.cors_origins:
        # Added last, so outermost: a refusal carries the CORS headers too, and a preflight
        # (which never carries the token) is answered before the token is asked for.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET"],
            allow_headers=["Authorization", "Last-Event-ID"],
            max_age=600,
        )
    app.add_middleware(AllowedHosts, allowed=settings.allowed_hosts)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(Accounting, metrics=state.metrics)
    return app


# Components named as docs/types.ts names the same types, so generated clients match it.
_RENAMED = {"HistoryEntry": ENTRY_NAME, "ContextType": CONTEXT_TYPE_NAME}


def _openapi(app: FastAPI, *, token: bool, operators: bool) -> dict[str, Any]:
    """The OpenAPI document: generated once, types named as in docs/types.ts, the bearer scheme."""
    if app.openapi_schema is None:
        document = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        text = json.dumps(document)
        for old, new in _RENAMED.items():
            text = text.replace(f'"#/components/schemas/{old}"', f'"#/components/schemas/{new}"')
        document = json.loads(text)
        schemas = document["components"]["schemas"]
        for old, new in _RENAMED.items():
            schemas[new] = schemas.pop(old)
            schemas[new]["title"] = new
        document["components"]["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "TASK_HISTORY_API_TOKEN, when the server has one set.",
            }
        }
        if operators:
            document["components"]["securitySchemes"]["operator"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "TASK_HISTORY_API_OPERATOR_TOKEN: replays and purges, and reads.",
            }
        for path, operations in document["paths"].items():
            if path in OPEN_PATHS:
                continue
            for operation in operations.values():
                if path in OPERATOR_PATHS:
                    operation["security"] = [{"operator": []}]
                elif token:
                    # Everything but the health checks asks for a token; either does.
                    operation["security"] = (
                        [{"bearer": []}, {"operator": []}] if operators else [{"bearer": []}]
                    )
        app.openapi_schema = document
    return app.openapi_schema


def _version() -> str:
    try:
        return version("task-build-history")
    except PackageNotFoundError:
        return "0"


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    """Every failure as `{"detail": "one readable line"}`, with the status it deserves."""

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _problem(422, "; ".join(_error_line(error) for error in exc.errors()))

    @app.exception_handler(InvalidCursorError)
    async def bad_cursor(_request: Request, exc: InvalidCursorError) -> JSONResponse:
        return _problem(400, str(exc))

    @app.exception_handler(InvalidParameterError)
    async def invalid_parameter(_request: Request, exc: InvalidParameterError) -> JSONResponse:
        return _problem(422, str(exc))

    @app.exception_handler(StoreError)
    async def database(request: Request, exc: StoreError) -> JSONResponse:
        if isinstance(exc, DatabaseUnavailableError | NotMigratedError):
            return _problem(503, str(exc))
        # The database's own words (table and role names, SQL) stay in the server's log.
        log.error("read failed", path=request.url.path, error=str(exc))
        if request.url.path in OPERATOR_PATHS:
            return _problem(
                500, "the database refused the replay or purge; the server's log says why"
            )
        return _problem(500, "the database refused the read; the server's log says why")

    @app.exception_handler(BrokerError)
    async def broker(request: Request, exc: BrokerError) -> JSONResponse:
        # A replay that could not reach the broker: what it moved stays moved, on the record.
        log.error("replay failed", path=request.url.path, error=str(exc))
        return _problem(503, f"the message broker failed: {exc}")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        # uvicorn logs the traceback too, once this answer is sent.
        log.error("request failed", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        return _problem(500, "internal error")


def _error_line(error: object) -> str:
    """One validation error in words: `query parameter limit: Input should be ...`."""
    if not isinstance(error, dict):
        return str(error)
    location = [str(part) for part in error.get("loc", ())]
    message = str(error.get("msg", "is invalid"))
    if len(location) >= 2:  # noqa: PLR2004  # (where, name, ...)
        return f"{location[0]} parameter {'.'.join(location[1:])}: {message}"
    return message
