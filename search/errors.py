"""User-facing errors, and the one table that turns OpenSearch client failures into them.

Every error says what is wrong in one line and carries how each front end reports it: the CLI
exits with `exit_code`, the HTTP API answers `http_status` with `code`. Failures of the
opensearch-py client (transport, HTTP status, per-request errors of an `msearch`) are mapped
here and nowhere else (`from_opensearch`, `from_response_error`), so a server-side failure is
reported as the cluster's problem and never as a bad query.

| error                | means                                              | exit | HTTP |
|----------------------|----------------------------------------------------|------|------|
| QueryError           | a request parameter is wrong (`field` names it)    | 2    | 400  |
| ConfigError          | flags, files or the server's setup are wrong       | 2    | 503  |
| IndexNotFound        | the index (alias) does not exist                   | 2    | 503  |
| ClusterError         | the cluster failed the request (HTTP 5xx)          | 1    | 502  |
| ClusterUnavailable   | unreachable, timed out, overloaded (429/503)       | 1    | 503  |
| ClusterAuthError     | credentials rejected (401) or permission denied (403) | 1 | 503  |
| ClusterTLSError      | TLS failed: untrusted or expired certificate, wrong scheme | 1 | 503 |
| ClusterRejected      | the cluster refused a request rsrt built (400)     | 1    | 502  |
| NodeError            | the local node could not be provisioned or started | 1    | 500  |
"""

from __future__ import annotations

import re
import ssl
from typing import Any

import opensearchpy


class RsrtError(Exception):
    """An error the user can act on; the message names the item and what is wrong."""

    exit_code = 1
    http_status = 500
    code = "ServerError"
    retry_after: int | None = None  # seconds, for errors a client may retry


class ConfigError(RsrtError):
    """Bad flags, environment or files given by the user; in a server, its own setup."""

    exit_code = 2
    http_status = 503
    code = "ServiceUnavailable"


class IndexNotFound(ConfigError):
    """The index or alias a command or request names does not exist."""


class QueryError(RsrtError):
    """A bad query parameter; `field` names it (the HTTP API answers 400 with it)."""

    exit_code = 2
    http_status = 400
    code = "InvalidParameterValue"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


class ClusterError(RsrtError):
    """The cluster failed a request, or lacks a needed plugin."""

    http_status = 502
    code = "UpstreamError"


class ClusterUnavailable(ClusterError):
    """The cluster cannot be reached, timed out, or is overloaded: trying again later may work."""

    http_status = 503
    code = "ServiceUnavailable"
    retry_after = 10


class ClusterAuthError(ClusterError):
    """The cluster rejected rsrt's credentials or denied a permission."""

    http_status = 503
    code = "ServiceUnavailable"


class ClusterTLSError(ClusterError):
    """TLS with the cluster failed: a certificate not trusted, expired or refused, or http vs https mixed up.

    Not a ClusterUnavailable: trying again does not help until a flag or a certificate changes.
    """

    http_status = 503
    code = "ServiceUnavailable"


class ClusterRejected(ClusterError):
    """The cluster answered 400 to a request rsrt built, for a reason no request parameter explains."""


class CaptionerNotConfigured(RsrtError):
    """The server has no VLM for image queries: the operator's setup, not the client's request."""

    http_status = 501
    code = "NotImplemented"


class CaptionerUnavailable(RsrtError):
    """The VLM did not describe the image (down, overloaded, timed out, or refused): try again later."""

    http_status = 503
    code = "ServiceUnavailable"
    retry_after = 30  # seconds: a VLM outage is seldom over sooner, and a retry costs a full VLM call


class ImageTooLarge(QueryError):
    """An upload over the server's limit (its bytes or its pixels): 413, naming the field."""

    http_status = 413
    code = "PayloadTooLarge"


class NodeError(RsrtError):
    """The local node could not be provisioned, started or stopped."""


# Where a 400's reason points at a request parameter: the user's filter, not rsrt's query.
_FIELD_HINTS = (("properties.", "properties"), ("geo_shape", "intersects"), ("geometry", "intersects"),
                ("shape", "intersects"), ("datetime", "datetime"))
_BUSY_TYPES = {"es_rejected_execution_exception", "rejected_execution_exception", "circuit_breaking_exception"}


def _one_line(text: Any, limit: int = 300) -> str:
    return " ".join(str(text).split())[:limit]


def error_reason(info: Any, fallback: Any = "") -> str:
    """The most specific reason in an OpenSearch error body (caused_by, then root_cause, then reason)."""
    error = info.get("error", info) if isinstance(info, dict) else info
    if isinstance(error, dict):
        caused = (error.get("caused_by") or {}).get("reason")
        root = (error.get("root_cause") or [{}])[0].get("reason")
        return _one_line(caused or root or error.get("reason") or fallback)
    return _one_line(error or fallback)


def _error_types(info: Any) -> set[str]:
    error = info.get("error", info) if isinstance(info, dict) else {}
    if not isinstance(error, dict):
        return set()
    found = {str(error.get("type", ""))}
    found |= {str(cause.get("type", "")) for cause in error.get("root_cause") or [] if isinstance(cause, dict)}
    found.add(str((error.get("caused_by") or {}).get("type", "")))
    return found - {""}


def _classify(status: int, info: Any, reason: str, at: str, index: str | None) -> RsrtError:
    """The table itself: an HTTP status and error body from OpenSearch → the rsrt error users see."""
    types = _error_types(info)
    target = f"index {index!r}" if index else "the index"
    if status == 404 or "index_not_found_exception" in types:
        return IndexNotFound(f"{target} does not exist; create it or ingest something first")
    if status == 401:
        return ClusterAuthError(f"{at} rejected the credentials (HTTP 401); check the user "
                                "and password (--user/--password, RSRT_OPENSEARCH_USER/PASSWORD)")
    if status == 403:
        return ClusterAuthError(f"{at} denied the request (HTTP 403): {_permission_reason(reason)}")
    if status in (429, 503) or types & _BUSY_TYPES:
        return ClusterUnavailable(f"{at} is overloaded or unavailable (HTTP {status}): {reason}; "
                                  "try again shortly")
    if status == 400:
        for hint, field in _FIELD_HINTS:
            if hint in reason:
                return QueryError(field, f"OpenSearch refused the filter: {reason}")
        return ClusterRejected(f"{at} refused a request for {target} (HTTP 400): {reason}")
    return ClusterError(f"{at} failed the request (HTTP {status}): {reason}")


def from_opensearch(exc: Exception, where: str | None = None, index: str | None = None) -> RsrtError:
    """Any opensearch-py exception as an rsrt error (an `RsrtError` passes through unchanged).

    `where` names the cluster (the CLI gives its URL); without it, messages name no host or port and
    quote no transport detail, so an API answer never leaks internal addresses.
    """
    if isinstance(exc, RsrtError):
        return exc
    at = f"OpenSearch at {where}" if where else "OpenSearch"
    cause = _cause(exc) if where else type(exc).__name__
    if isinstance(exc, opensearchpy.SSLError) or isinstance(getattr(exc, "info", None), ssl.SSLError):
        return _tls_error(str(getattr(exc, "info", None) or exc), at, cause)
    if isinstance(exc, opensearchpy.ConnectionTimeout):
        return ClusterUnavailable(f"{at} did not answer in time ({cause})")
    if isinstance(exc, opensearchpy.ConnectionError):
        if _remote_closed(getattr(exc, "info", None)):  # plain HTTP sent to a TLS port
            return ClusterTLSError(f"{at} closed the connection without an answer; if it serves HTTPS (the "
                                   "security plugin), use an https:// URL")
        lost = f"cannot reach {at} ({cause})" if where else f"{at} is unreachable ({cause})"
        return ClusterUnavailable(f"{lost}; is it running? try `rsrt node start`")
    if isinstance(exc, opensearchpy.TransportError):
        status = exc.status_code if isinstance(exc.status_code, int) else 500
        return _classify(status, exc.info, error_reason(exc.info, exc.error), at, index)
    return ClusterError(f"{at}: {cause}")


def _remote_closed(info: Any) -> bool:
    """Whether the server hung up before answering (urllib3 wraps http.client's RemoteDisconnected)."""
    from http.client import RemoteDisconnected

    for _ in range(4):
        if isinstance(info, RemoteDisconnected):
            return True
        info = next((arg for arg in getattr(info, "args", ()) if isinstance(arg, BaseException)), None)
    return False


_TRUST_HINT = ("give the cluster's CA with --ca-file or RSRT_OPENSEARCH_CA_FILE (a local secure node: "
               "<cluster dir>/ca.pem, printed by `rsrt node start --secure`)")


def _tls_error(detail: str, at: str, cause: str) -> ClusterTLSError:
    """Which TLS failure it was, from OpenSearch's side or ours, in words that say what to change."""
    text = detail.lower()
    if "wrong version number" in text or "record layer failure" in text or "http request" in text:
        return ClusterTLSError(f"{at} does not speak TLS (it answered in plain HTTP); use an http:// URL")
    if "alert certificate expired" in text:
        return ClusterTLSError(f"{at} refused the client certificate as expired; renew it ({cause})")
    if "alert" in text and ("certificate" in text or "unknown ca" in text):
        return ClusterTLSError(f"{at} refused the client certificate ({cause}); it must be signed by a CA "
                               "the cluster trusts")
    if "certificate has expired" in text or "certificate is not yet valid" in text:
        return ClusterTLSError(f"the TLS certificate of {at} has expired or is not valid yet ({cause}); renew "
                               "the cluster's certificate, and check both machines' clocks")
    if "mismatch" in text or "doesn't match" in text:
        return ClusterTLSError(f"the TLS certificate of {at} is not for this host name ({cause}); connect by a "
                               "name or address the certificate lists")
    if "certificate verify failed" in text:
        return ClusterTLSError(f"the TLS certificate of {at} is not trusted ({cause}); {_TRUST_HINT}")
    return ClusterTLSError(f"TLS to {at} failed ({cause}); {_TRUST_HINT}")


_NO_PERMISSION = re.compile(r"no permissions for \[([^\]]*)\] and User \[name=([^,\]]+)")


def _permission_reason(reason: str) -> str:
    """The security plugin's 403 as 'user X lacks permission Y'; a HEAD request's 403 carries no reason."""
    found = _NO_PERMISSION.search(reason)
    if found:
        return (f"user {found.group(2)!r} lacks the permission {found.group(1)} (docs/security.md lists what "
                "each rsrt command needs)")
    return reason or "the user lacks a permission this request needs (docs/security.md lists them)"


def from_response_error(response: dict[str, Any], where: str | None = None, index: str | None = None) -> RsrtError:
    """One failed entry of an `msearch` answer ({"error": …, "status": …}) as an rsrt error."""
    status = int(response.get("status") or 500)
    at = f"OpenSearch at {where}" if where else "OpenSearch"
    return _classify(status, response, error_reason(response), at, index)


def _cause(exc: Exception) -> str:
    info = getattr(exc, "info", None)
    if isinstance(info, Exception):
        return _one_line(f"{type(info).__name__}: {info}", 200)
    return _one_line(getattr(exc, "error", None) or exc, 200) or type(exc).__name__
