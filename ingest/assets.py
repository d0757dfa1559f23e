"""Remote assets: images and rasters behind `http(s)://` or `s3://` URIs, read with bounded retries.

A STAC item's asset is often a URL, not a file. This module is where such a URI is read:

* `AssetOptions`: the run's timeout, retry budget and S3 endpoint (a value object; never read
  from the environment here; the CLI fills it from flags and the standard AWS variables).
* `fetch_bytes(uri, options)`: the whole object (a JPEG/PNG thumbnail), over httpx or boto3.
* `open_raster(uri, options)`: a rasterio dataset read by HTTP range requests (GDAL `/vsicurl/`,
  `/vsis3/`), so a decimated read of a COG downloads only the overview it needs.

Every failure is an `AssetError` naming the URI and the HTTP status; `transient` says whether
trying again later may work (5xx, 429, timeouts, refused connections) or not (403, 404).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from rsrt.search.errors import ConfigError, RsrtError

MAX_BACKOFF = 30.0  # seconds: the longest wait between two attempts


@dataclass(frozen=True)
class AssetOptions:
    """How remote assets are read (`--asset-timeout`, `--asset-retries`, `--s3-endpoint`, …)."""

    timeout: float = 30.0  # seconds per request
    retries: int = 4  # extra attempts on 5xx, 429, timeouts, refused/reset connections
    backoff: float = 1.0  # first delay in seconds, doubled each attempt, at most MAX_BACKOFF
    s3_endpoint: str | None = None  # e.g. http://127.0.0.1:9000 (MinIO, moto); None: AWS
    s3_region: str | None = None
    s3_no_sign_request: bool = False  # public buckets: no credentials

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ConfigError(f"--asset-timeout {self.timeout}: must be more than 0 seconds")
        if self.retries < 0:
            raise ConfigError(f"--asset-retries {self.retries}: must be 0 or more")
        if self.backoff < 0:
            raise ConfigError(f"asset backoff {self.backoff}: must be 0 or more seconds")
        if self.s3_endpoint is not None and not self.s3_endpoint.startswith(("http://", "https://")):
            raise ConfigError(f"--s3-endpoint {self.s3_endpoint!r}: expected http://host:port or https://host:port")

    @property
    def attempts(self) -> int:
        """Requests made at most for one read: the first one and the retries."""
        return 1 + self.retries


class AssetError(RsrtError):
    """A remote asset could not be read; `status` is the HTTP status when there was one."""

    def __init__(self, uri: str, reason: str, *, status: int | None = None, transient: bool = False) -> None:
        super().__init__(f"asset {uri}: {reason}")
        self.uri = uri
        self.status = status
        self.transient = transient


# ---------------------------------------------------------------------------- URIs

REMOTE_SCHEMES = ("http://", "https://", "s3://")
# Statuses worth another attempt: the server is overloaded or failing, not refusing this object.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, 507, 509, 520, 521, 522, 523, 524})
_GDAL_RETRY_CODES = ",".join(str(s) for s in sorted(RETRY_STATUSES))


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """An `http(s)://` or `s3://` URI (read through this module), not a local path or `file://`."""
    return isinstance(uri, str) and uri.lower().startswith(REMOTE_SCHEMES)


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` → (bucket, key); ConfigError when either is missing."""
    parts = urlsplit(uri)
    bucket, key = parts.netloc, parts.path.lstrip("/")
    if not bucket or not key:
        raise ConfigError(f"{uri}: an S3 URI is s3://bucket/key")
    return bucket, key


def _transient_status(status: int | None) -> bool:
    return status is None or status in RETRY_STATUSES or status >= 500


def _delay(options: AssetOptions, attempt: int, retry_after: float | None = None) -> float:
    """Seconds before attempt `attempt + 1`: the server's `Retry-After` when given, else doubling."""
    if retry_after is not None:
        return min(MAX_BACKOFF, max(0.0, retry_after))
    return min(MAX_BACKOFF, options.backoff * (2 ** (attempt - 1)))


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (the delta form; an HTTP date is converted too)."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        from email.utils import parsedate_to_datetime

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _http_reason(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


# ---------------------------------------------------------------------------- whole objects


def fetch_bytes(uri: str, options: AssetOptions | None = None) -> bytes:
    """The whole object at `uri` (a JPEG/PNG thumbnail), retried on 5xx, 429, timeouts, connections.

    Raises AssetError: `transient` once the retries are spent on such failures, not for 403/404.
    """
    options = options or AssetOptions()
    if uri.lower().startswith("s3://"):
        return _fetch_s3(uri, options)
    if not uri.lower().startswith(("http://", "https://")):
        raise ConfigError(f"{uri}: not an http(s):// or s3:// URI")
    import httpx

    last = "no attempt"
    status: int | None = None
    with httpx.Client(timeout=options.timeout, follow_redirects=True) as client:
        for attempt in range(1, options.attempts + 1):
            wait: float | None = None
            try:
                response = client.get(uri)
            except httpx.TimeoutException:
                last, status = "timed out", None
            except httpx.TransportError as exc:  # refused, reset, DNS, protocol
                last, status = f"connection failed: {exc or type(exc).__name__}", None
            else:
                if response.status_code < 300:
                    return response.content
                status = response.status_code
                last = _http_reason(status)
                if not _transient_status(status):
                    raise AssetError(uri, last, status=status, transient=False)
                wait = _retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
            if attempt < options.attempts:
                time.sleep(_delay(options, attempt, wait))
    raise AssetError(uri, _exhausted(options, last), status=status, transient=True)


def _exhausted(options: AssetOptions, last: str) -> str:
    return f"unreachable after {options.attempts} attempt{'s' if options.attempts != 1 else ''}: {last}"


def s3_client(options: AssetOptions) -> Any:
    """A boto3 S3 client: the standard credential chain, our endpoint, botocore's own retries off."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=options.timeout,
                    read_timeout=options.timeout, signature_version=UNSIGNED if options.s3_no_sign_request else None,
                    s3={"addressing_style": "path"} if options.s3_endpoint else None)
    return boto3.session.Session().client("s3", endpoint_url=options.s3_endpoint, region_name=options.s3_region,
                                          config=config)


def _fetch_s3(uri: str, options: AssetOptions) -> bytes:
    from botocore.exceptions import (
        BotoCoreError,
        ClientError,
        NoCredentialsError,
        ReadTimeoutError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    bucket, key = split_s3(uri)
    client = s3_client(options)
    last, status = "no attempt", None
    for attempt in range(1, options.attempts + 1):
        wait: float | None = None
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except NoCredentialsError:
            raise AssetError(uri, "no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
                             "~/.aws, or --s3-no-sign-request for a public bucket)", transient=False) from None
        except ClientError as exc:
            meta = exc.response.get("ResponseMetadata", {})
            status = meta.get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code", "")
            last = f"{_http_reason(status)} ({code})" if status else str(code or exc)
            if status is not None and not _transient_status(status):
                raise AssetError(uri, last, status=status, transient=False) from None
            wait = _retry_after((meta.get("HTTPHeaders") or {}).get("retry-after"))
        except ReadTimeoutError:
            last, status = "timed out", None
        except BotoConnectionError as exc:
            last, status = f"connection failed: {exc}", None
        except BotoCoreError as exc:  # incomplete reads, checksum errors: the transfer broke
            last, status = f"transfer failed: {exc}", None
        if attempt < options.attempts:
            time.sleep(_delay(options, attempt, wait))
    raise AssetError(uri, _exhausted(options, last), status=status, transient=True)


# ---------------------------------------------------------------------------- rasters by range reads

_STATUS_IN_MESSAGE = re.compile(r"HTTP (?:response )?(?:code|status)[: ]+(\d{3})|HTTP error code ?: ?(\d{3})", re.I)
_TIMEOUT_WORDS = ("timed out", "timeout")
_CONNECTION_WORDS = ("could not connect", "failed to connect", "couldn't connect", "connection refused",
                     "connection reset", "recv failure", "send failure", "could not resolve", "empty reply",
                     "couldn't resolve", "transfer closed", "ssl connect error")
_MISSING_WORDS = ("does not exist", "no such file", "not found")
# Failures GDAL does not retry by itself (a refused connection fails at once): our loop does.
_GDAL_UNRETRIED = ("could not connect", "failed to connect", "couldn't connect", "connection refused")
_failed_opens: set[str] = set()  # vsicurl remembers a failed open: these are reopened without its cache
_failed_lock = threading.Lock()


def gdal_path(uri: str) -> str:
    """The GDAL virtual path of a remote URI (`/vsicurl/…`, `/vsis3/…`); a local path as it is."""
    lower = uri.lower()
    if lower.startswith(("http://", "https://")):
        return f"/vsicurl/{uri}"
    if lower.startswith("s3://"):
        return "/vsis3/" + uri[len("s3://"):]
    if lower.startswith("file://"):
        return unquote(urlsplit(uri).path)
    return uri


def gdal_config(options: AssetOptions) -> dict[str, Any]:
    """GDAL configuration for remote reads: our timeout and retry budget, our S3 endpoint.

    GDAL 3.10 retries 429/500/502/503/504, timeouts and reset connections itself
    (`GDAL_HTTP_MAX_RETRY`, delay doubling from `GDAL_HTTP_RETRY_DELAY`); it does not honour
    `Retry-After` and does not retry a refused connection (`open_raster` does). Credentials stay
    GDAL's standard chain (AWS_* environment variables, ~/.aws).
    """
    config: dict[str, Any] = {
        "GDAL_HTTP_TIMEOUT": max(1, math.ceil(options.timeout)),
        "GDAL_HTTP_CONNECTTIMEOUT": max(1, math.ceil(options.timeout)),
        "GDAL_HTTP_MAX_RETRY": options.retries,
        "GDAL_HTTP_RETRY_DELAY": options.backoff,
        "GDAL_HTTP_RETRY_CODES": _GDAL_RETRY_CODES,
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing per open: one request less
        # Several ranges of one read go as separate requests (GDAL's default), never as one
        # multi-range GET: S3 and many servers answer that with the whole object.
        "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    }
    if options.s3_endpoint:
        parts = urlsplit(options.s3_endpoint)
        config["AWS_S3_ENDPOINT"] = parts.netloc
        config["AWS_HTTPS"] = "NO" if parts.scheme == "http" else "YES"
        config["AWS_VIRTUAL_HOSTING"] = "FALSE"
    if options.s3_region:
        config["AWS_REGION"] = options.s3_region
    if options.s3_no_sign_request:
        config["AWS_NO_SIGN_REQUEST"] = "YES"
    return config


def _classify(uri: str, exc: BaseException, options: AssetOptions) -> Exception:
    """A GDAL/rasterio failure as AssetError (the transfer failed) or RasterReadError (bytes unreadable)."""
    from .raster import RasterReadError

    text = " ".join(str(exc).split())
    lower = text.lower()
    match = _STATUS_IN_MESSAGE.search(text)
    if match:
        status = int(match.group(1) or match.group(2))
        if _transient_status(status):
            return AssetError(uri, _exhausted(options, _http_reason(status)), status=status, transient=True)
        return AssetError(uri, _http_reason(status), status=status, transient=False)
    if any(word in lower for word in _TIMEOUT_WORDS):
        return AssetError(uri, _exhausted(options, "timed out"), transient=True)
    if any(word in lower for word in _CONNECTION_WORDS):
        return AssetError(uri, _exhausted(options, f"connection failed: {text[:200]}"), transient=True)
    if any(word in lower for word in ("access denied", "accessdenied", "forbidden")):
        return AssetError(uri, _http_reason(403), status=403, transient=False)
    if any(word in lower for word in _MISSING_WORDS) or "nosuchkey" in lower or "nosuchbucket" in lower:
        return AssetError(uri, _http_reason(404), status=404, transient=False)
    if "credential" in lower or "aws_secret_access_key" in lower:
        return AssetError(uri, f"no usable AWS credentials: {text[:200]}", transient=False)
    return RasterReadError(f"cannot read raster: {text[:300]}")


@contextlib.contextmanager
def open_raster(uri: str | os.PathLike[str], options: AssetOptions | None = None) -> Iterator[Any]:
    """A rasterio dataset for a local path or an `http(s)://` / `s3://` URI, read by range requests.

    Remote reads run inside a `rasterio.Env` with `gdal_config(options)`; a failure while opening
    or reading is an AssetError (URI, status, transient) when the transfer failed, a
    RasterReadError when the bytes are not a readable raster. A refused connection, which GDAL
    does not retry, is retried here with the same budget and doubling delay.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    from .raster import RasterReadError

    options = options or AssetOptions()
    if not is_remote(str(uri)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a plain TIFF is fine here
            try:
                dataset = rasterio.open(gdal_path(str(uri)) if isinstance(uri, str) else uri)
            except (RasterioError, OSError) as exc:
                raise RasterReadError(f"cannot read raster: {exc}") from None
            with dataset:
                yield dataset
        return
    uri = str(uri)
    path = gdal_path(uri)
    config = gdal_config(options)
    with rasterio.Env(**config), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        dataset = None
        for attempt in range(1, options.attempts + 1):
            with _failed_lock:
                uncached = uri in _failed_opens
            if uncached:  # vsicurl would answer the earlier failure from its cache
                rasterio.env.setenv(CPL_VSIL_CURL_NON_CACHED=path)
            try:
                dataset = rasterio.open(path)
            except (RasterioError, OSError) as exc:
                with _failed_lock:
                    _failed_opens.add(uri)
                lower = str(exc).lower()
                if attempt < options.attempts and any(word in lower for word in _GDAL_UNRETRIED):
                    time.sleep(_delay(options, attempt))
                    continue
                raise _classify(uri, exc, options) from None
            break
        assert dataset is not None
        with _failed_lock:
            _failed_opens.discard(uri)
        try:
            with dataset:
                yield dataset
        except (RasterioError, OSError) as exc:  # a block read failed after the retries GDAL made
            with _failed_lock:
                _failed_opens.add(uri)
            raise _classify(uri, exc, options) from None
