"""Errors as HTTP answers: domain errors (`cloud_gateway.errors`) map to problem+json here only.

The domain raises `GatewayError` subclasses and knows nothing of HTTP; handlers raise
`ApiProblem` for what only HTTP knows (a body that is not JSON, a bad query parameter).
`problems_middleware` turns both, aiohttp's own errors and any bug into RFC 9457 documents.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import BaseModel

from cloud_gateway.api.routes import Handler
from cloud_gateway.errors import (
    Conflict,
    GatewayError,
    InvalidInput,
    InvalidTransition,
    LinkDown,
    NotFound,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details, as every error of this API is answered."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    errors: list[dict[str, str]] | None = None
    free_bytes: int | None = None
    """507 (the store's disk is full): the free space left, when the backend knows it."""


class ApiProblem(Exception):
    """Raised by handlers to answer with a problem document."""

    def __init__(
        self, status: int, title: str, detail: str = "", errors: list[dict[str, str]] | None = None
    ) -> None:
        super().__init__(detail or title)
        self.problem = Problem(status=status, title=title, detail=detail, errors=errors)


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=problem.status,
        text=problem.model_dump_json(exclude_none=True),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def domain_problem(exc: GatewayError) -> Problem | None:
    """The answer to a domain error, or None for one that is the gateway's fault (a 500)."""
    detail = str(exc)
    match exc:
        case NotFound():
            return Problem(status=404, title="Not Found", detail=detail)
        case InvalidInput():
            return Problem(status=400, title="Bad Request", detail=detail, errors=exc.errors)
        case InvalidTransition():
            return Problem(status=409, title="Conflict", detail=detail)
        case Conflict():
            errors = [{"loc": exc.field, "msg": detail}] if exc.field else None
            return Problem(status=409, title="Conflict", detail=detail, errors=errors)
        case LinkDown():
            return Problem(status=503, title="Service Unavailable", detail=detail)
    return None


@web.middleware
async def problems_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into `application/problem+json`; the process never leaks a traceback."""
    if "\x00" in request.path:
        # No id of ours holds a NUL (`%00`), and PostgreSQL's text cannot even be asked for it.
        return problem_response(
            Problem(status=404, title="Not Found", detail="no resource has a NUL in its name")
        )
    try:
        return await handler(request)
    except ApiProblem as exc:
        return problem_response(exc.problem)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem_response(
            Problem(status=exc.status, title=exc.reason, detail=exc.text or ""),
            headers={k: v for k, v in exc.headers.items() if k.lower() in ("allow",)},
        )
    except HttpProcessingError as exc:
        # A malformed body part (multipart headers, chunking) met while a handler reads it:
        # the client's fault, answered like aiohttp answers a malformed request line.
        if not 400 <= exc.code < 500:
            raise
        return problem_response(
            Problem(status=exc.code, title="Bad Request", detail=exc.message[:200])
        )
    except StoreUnavailable as exc:
        # A state, not a bug: the caller tries again later (the same write is safe to retry).
        log.warning("request %s %s: %s", request.method, request.path, exc)
        return problem_response(
            Problem(
                status=exc.status,
                title="Insufficient Storage" if exc.status == 507 else "Service Unavailable",
                detail=str(exc)[:500],
                free_bytes=exc.free_bytes,
            ),
            headers={"Retry-After": str(exc.retry_after_s)},
        )
    except GatewayError as exc:
        problem = domain_problem(exc)
        if problem is not None:
            return problem_response(problem)
        log.exception("request %s %s failed", request.method, request.path)
        return problem_response(Problem(status=500, title="Internal Server Error", detail=str(exc)))
    except Exception:
        # A bug, not the client's fault: logged with its traceback, answered without it.
        log.exception("request %s %s failed", request.method, request.path)
        return problem_response(Problem(status=500, title="Internal Server Error"))
