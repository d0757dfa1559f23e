"""Every error answer of the API has one shape, {code, field, description}, and comes from one table.

rsrt errors carry their HTTP status and code (`rsrt.search.errors`); an opensearch-py exception
that reaches a route is mapped by the same table first. FastAPI's own validation errors become a
400 naming the first bad field.
"""

import logging
import re

import opensearchpy
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ConfigError, QueryError, RsrtError, from_opensearch

log = logging.getLogger("rsrt.api")


class ErrorBody(BaseModel):
    """Every error answer: a machine code, the offending field (null when none) and a sentence."""

    code: str
    field: str | None = None
    description: str


def error_response(status: int, code: str, description: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "field": field, "description": description}, status_code=status,
                        headers=headers)


# A URL, or a host:port, in an error text: a server-side failure's answer never names the cluster's
# addresses (the error table's messages name none without `where`, but a transport library's might).
_ADDRESS = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"),;]+|\[[0-9a-f:]+\](?::\d+)?|"
                      r"\b(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?\b|\b[a-z][\w.-]*:\d{2,5}\b", re.IGNORECASE)


def public_description(exc: RsrtError) -> str:
    """An rsrt error's text with any address in it replaced: safe to answer a client with."""
    return _ADDRESS.sub("<cluster>", str(exc))


def rsrt_error_response(exc: RsrtError) -> JSONResponse:
    """An rsrt error as its HTTP answer: status and code from the error table, `field` for bad input."""
    if isinstance(exc, QueryError):
        return error_response(exc.http_status, exc.code, exc.detail, exc.field)
    description = public_description(exc)
    if isinstance(exc, ConfigError):
        # In a request, a ConfigError is the server's setup (index missing, encoder mismatch), not the
        # user's input (that is a QueryError): telling the portal "your query is wrong" would mislead.
        description = f"the search index is not usable: {description}"
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return error_response(exc.http_status, exc.code, description, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default is a 422 list; portals get one 400 naming the first bad field.
        errors = list(exc.errors())
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        loc = [str(part) for part in first.get("loc", ())]
        where = loc[0] if loc else "body"
        rest = loc[1:]
        if where == "body" and (not rest or rest[0].isdigit() or first.get("type") == "json_invalid"):
            field = "body"
        else:
            field = rest[0] if rest else where
        path = ".".join(rest) or field
        return error_response(400, "InvalidParameterValue", f"{path}: {first.get('msg', 'invalid value')}", field)

    @app.exception_handler(RsrtError)
    async def rsrt_error(_: Request, exc: RsrtError) -> JSONResponse:
        return rsrt_error_response(exc)

    @app.exception_handler(opensearchpy.OpenSearchException)
    async def opensearch_error(_: Request, exc: opensearchpy.OpenSearchException) -> JSONResponse:
        return rsrt_error_response(from_opensearch(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}
        code = codes.get(exc.status_code, "InvalidRequest" if exc.status_code < 500 else "ServerError")
        # FastAPI's only own 400 is "There was an error parsing the body" (e.g. JSON nested too deeply).
        field = "body" if exc.status_code == 400 else None
        return error_response(exc.status_code, code, str(exc.detail), field, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in the search API")
        return error_response(500, "InternalServerError", f"unexpected {type(exc).__name__}; see the server log")
