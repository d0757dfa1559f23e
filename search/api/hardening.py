"""What keeps the API safe on a network: a request body limit, links from a public URL, trusted hosts.

`install_hardening(app, HardeningConfig(...))` wraps the app `create_app` returns in two ASGI
middlewares (the host one outermost, before any proxy-header middleware; the body limit inside CORS,
so a browser can read its 413) that

- refuses a body larger than its limit *while it arrives*: a declared `Content-Length` over the
  limit is answered 413 before a byte of the body is read, and a chunked body is counted as uvicorn
  hands it over and stopped (413) at the first byte past the limit, so a 100 MB upload costs at most
  the limit plus one network read, never 100 MB of memory; `POST /search/image` has its own, larger
  limit (an image upload);
- with a `public_url`, builds every link from it (scheme, host, path prefix set on the ASGI scope, so
  Starlette's `request.base_url`/`url_for` and stac-fastapi's link builders follow) whatever `Host`
  the client sent; without one, answers 400 to a request whose `Host` is not one of `trusted_hosts`,
  so no link ever echoes a host an attacker chose (cache poisoning, phishing links);
- drops `Forwarded` / `X-Forwarded-Host|Proto|Port|Prefix` request headers: links come from the public
  URL or a trusted `Host`, never from a header any client can send.

Every refusal has the API's one error shape (`errors.error_response`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError
from .errors import error_response

MIB = 1024 * 1024
DEFAULT_MAX_BODY_BYTES = 1 * MIB  # JSON searches are a few KiB; a GeoJSON polygon rarely 100 KiB
DEFAULT_MAX_IMAGE_BYTES = 20 * MIB  # a query image: a large JPEG/PNG chip, not a whole scene
MULTIPART_ALLOWANCE = 64 * 1024  # the form fields and part headers around the image in its upload
IMAGE_QUERY_PATH = "/search/image"
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
# Headers a proxy sets, but so can any client: with them, a client would choose the links' host.
_FORWARDING_HEADERS = frozenset({b"forwarded", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port",
                                 b"x-forwarded-prefix"})


@dataclass(frozen=True)
class HardeningConfig:
    """How the API faces a network; `rsrt serve`'s `--public-url`, `--trusted-host`, `--max-body-bytes`.

    `public_url` (e.g. `https://portal.example.org/stac/`) is where clients reach the API: every link
    starts with it. Without it, links use the request's `Host`, which must be one of `trusted_hosts`
    (`*.example.org` matches sub-domains, `*` trusts any host: links then echo whatever a client sends).
    `max_body_bytes` bounds every request body but image uploads, which `max_image_bytes` bounds.
    """

    public_url: str | None = None
    trusted_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES

    def __post_init__(self) -> None:
        object.__setattr__(self, "trusted_hosts", tuple(host.strip().lower() for host in self.trusted_hosts))
        if self.public_url is not None:
            parts = urlsplit(self.public_url)
            if parts.scheme not in {"http", "https"} or not parts.hostname or parts.query or parts.fragment:
                raise ConfigError(f"public URL {self.public_url!r} is not an http(s) URL such as "
                                  "https://portal.example.org/stac/ (no query, no fragment)")
            try:
                parts.port  # noqa: B018 - raises on a port that is not a number
            except ValueError:
                raise ConfigError(f"public URL {self.public_url!r} has an invalid port") from None
        elif not self.trusted_hosts:
            raise ConfigError("give a public URL or at least one trusted host (or '*' to trust any Host header)")
        for host in self.trusted_hosts:
            if not host or "/" in host or (host != "*" and "*" in host[1:]) or (host.startswith("*") and
                                                                                 not host.startswith("*.")):
                raise ConfigError(f"trusted host {host!r} is not a host name, an address, *.domain or *")
        for name, value in (("max body bytes", self.max_body_bytes), ("max image bytes", self.max_image_bytes)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")

    @property
    def public_parts(self) -> tuple[str, str, str] | None:
        """(scheme, host[:port], path prefix without its trailing slash), or None without a public URL."""
        if self.public_url is None:
            return None
        parts = urlsplit(self.public_url)
        default_port = 443 if parts.scheme == "https" else 80
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
        return parts.scheme, netloc, parts.path.rstrip("/")

    def body_limit(self, path: str) -> int:
        """The largest body a request to `path` (below the root path) may send."""
        if path.rstrip("/") == IMAGE_QUERY_PATH:
            return self.max_image_bytes + MULTIPART_ALLOWANCE
        return self.max_body_bytes

    def trusts(self, host_header: str | None) -> bool:
        """Whether links may be built from this `Host` header (host part only, any port)."""
        if "*" in self.trusted_hosts:
            return True
        if not host_header:
            return False
        host = host_header.strip().lower()
        if host.startswith("["):  # [v6]:port
            host = host[: host.find("]") + 1] if "]" in host else host
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        for pattern in self.trusted_hosts:
            if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
                return True
        return False


class BodyTooLarge(HTTPException):
    """Raised from `receive` when a body passes its limit: FastAPI re-raises HTTPExceptions met while it
    reads a body (any other exception becomes its 400 "error parsing the body")."""

    def __init__(self, limit: int, field: str | None) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")
        self.limit = limit
        self.field = field


def _too_large_response(exc: BodyTooLarge) -> JSONResponse:
    # Connection: close, so uvicorn does not go on reading the rest of a body nobody will use.
    what = "the image upload" if exc.field == "image" else "the request body"
    return error_response(413, "PayloadTooLarge", f"{what} is larger than the limit of {exc.limit} bytes",
                          exc.field, headers={"Connection": "close"})


class _PublicOrigin:
    """Links from the public URL, or only from a trusted `Host`; forwarded headers dropped (outermost)."""

    def __init__(self, app: ASGIApp, config: HardeningConfig) -> None:
        self.app = app
        self.config = config
        self.public = config.public_parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = dict(scope)
        headers = [(key, value) for key, value in scope["headers"] if key not in _FORWARDING_HEADERS]
        host_header = next((value.decode("latin-1") for key, value in headers if key == b"host"), None)
        if self.public is not None:
            scheme, netloc, prefix = self.public
            headers = [(key, value) for key, value in headers if key != b"host"] + [(b"host", netloc.encode())]
            scope["scheme"] = scheme
            path = scope["path"]
            if prefix and not (path == prefix or path.startswith(prefix + "/")):
                # the proxy stripped the prefix: put it back, so request.url is the URL the client used
                scope["path"] = prefix + path
                scope["raw_path"] = prefix.encode() + scope.get("raw_path", path.encode())
            scope["root_path"] = prefix
        elif not self.config.trusts(host_header):
            shown = (host_header or "")[:100]
            response = error_response(400, "InvalidHost", f"the Host header {shown!r} is not a trusted host of this "
                                      "server; start `rsrt serve` with --public-url URL (where clients reach it) "
                                      "or --trusted-host NAME", "Host")
            await response(scope, receive, send)
            return
        scope["headers"] = headers
        await self.app(scope, receive, send)


class _BodyLimit:
    """The body limit, counted as the body arrives (inside CORS, so browsers can read the 413)."""

    def __init__(self, app: ASGIApp, config: HardeningConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        limit = self.config.body_limit(path)
        field = "image" if path.rstrip("/") == IMAGE_QUERY_PATH else None
        declared = next((value for key, value in scope["headers"] if key == b"content-length"), None)
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            await _too_large_response(BodyTooLarge(limit, field))(scope, receive, send)
            return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, field)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge as exc:  # read outside FastAPI's body parsing (a middleware, a raw route)
            if started:
                raise
            await _too_large_response(exc)(scope, receive, send)


def install_hardening(app: FastAPI, config: HardeningConfig) -> None:
    """Harden `app` (as `create_app` returned it): the host/public-URL check outermost (before any
    middleware reads the scope's host), the body limit innermost of the middlewares (inside CORS)."""

    async def too_large(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, BodyTooLarge)
        return _too_large_response(exc)

    if app.middleware_stack is not None:
        raise RuntimeError("install_hardening must run before the app serves its first request")
    app.add_exception_handler(BodyTooLarge, too_large)
    app.user_middleware.append(Middleware(_BodyLimit, config=config))  # innermost: after CORS
    app.add_middleware(_PublicOrigin, config=config)  # outermost


__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_IMAGE_BYTES", "IMAGE_QUERY_PATH", "BodyTooLarge",
           "HardeningConfig", "install_hardening"]
