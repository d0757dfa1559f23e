"""A VLM behind an OpenAI-compatible chat-completions endpoint (vLLM, TGI, Ollama, LM Studio, OpenAI).

Serving the VLM separately is how large archives get captioned: the GPU box runs the server, the
ingest machine only sends images. Network trouble is expected at that scale, so transport errors
(429, 5xx, timeouts, dropped connections) are retried with exponential backoff and jitter, and
`Retry-After` is honoured; a request the server refuses for good (other 4xx) fails only its image.
Failures that say nothing about the image — transport retries exhausted, the key or the model
refused (401, 403, 404) — are marked `transient`, so the pipeline retries those images on the next
run (and stops the run when they pile up: the server is down, not the archive bad).
"""

from __future__ import annotations

import base64
import email.utils
import io
import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx

from rsrt.search.errors import ConfigError

from .base import Answer, Captioner, LoadedImage

log = logging.getLogger(__name__)

API_KEY_VARIABLES = ("RSRT_VLM_API_KEY", "OPENAI_API_KEY")
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504}) | frozenset(range(520, 530))
# Refusals of the setup (key, permissions, model or endpoint), not of the image: same for every image.
SETUP_STATUS = frozenset({401, 403, 404})
MAX_RETRY_AFTER = 300.0  # a server asking for more is misconfigured; do not hang an ingest on it


class _Retryable(Exception):
    """A failure worth trying again, with the server's requested delay if it gave one."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delay in seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (now if now is not None else datetime.now(UTC).timestamp())
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class OpenAICompatibleCaptioner(Captioner):
    """Captions images through `POST {base_url}/chat/completions`, `concurrency` requests at a time."""

    kind = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        concurrency: int = 4,
        max_retries: int = 5,
        timeout: float = 180.0,
        json_mode: bool = True,
        temperature: float | None = 0.0,
        retry_temperature: float = 0.7,
        max_tokens: int | None = 2048,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        max_image_side: int | None = None,
        jpeg_quality: int = 90,
        extra_body: dict[str, Any] | None = None,
        transport: httpx.BaseTransport | None = None,
        max_attempts: int = 3,
        **prompt_options: Any,
    ) -> None:
        super().__init__(max_attempts=max_attempts, **prompt_options)
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {base_url!r}")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be at least 1, got {concurrency}")
        if max_retries < 0:
            raise ConfigError(f"max_retries must be 0 or more, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.endpoint = f"{self.base_url}/chat/completions"
        self._model = model
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.json_mode = json_mode
        self.temperature = temperature
        self.retry_temperature = retry_temperature
        self.max_tokens = max_tokens
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_image_side = max_image_side
        self.jpeg_quality = jpeg_quality
        self.extra_body = dict(extra_body or {})
        key = api_key if api_key is not None else next(
            (os.environ[name] for name in API_KEY_VARIABLES if os.environ.get(name)), None
        )
        self._secret = key or ""  # only for redacting server messages; never logged or shown
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            transport=transport,
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="rsrt-vlm")
        self._random = random.Random()
        self._random_lock = threading.Lock()

    def __repr__(self) -> str:  # the key stays out of reprs, logs and tracebacks
        return f"{type(self).__name__}(base_url={self.base_url!r}, model={self._model!r})"

    @property
    def model_id(self) -> str:
        return self._model

    @property
    def chunk_size(self) -> int:
        return self.concurrency * 4

    def _answer(self, images: Sequence[LoadedImage], prompt: str, attempt: int) -> list[Answer]:
        return list(self._pool.map(lambda loaded: self._ask(loaded, prompt, attempt), images))

    # -- one image -----------------------------------------------------------------------------

    def _payload(self, loaded: LoadedImage, prompt: str, attempt: int) -> dict[str, Any]:
        content = [
            {"type": "image_url", "image_url": {"url": self._data_url(loaded)}},
            {"type": "text", "text": prompt},
        ]
        payload: dict[str, Any] = {"model": self._model, "messages": [{"role": "user", "content": content}]}
        if self.temperature is not None:
            # A retry samples: at temperature 0 it would get the same bad answer again.
            retry = max(self.temperature, self.retry_temperature)
            payload["temperature"] = self.temperature if attempt == 1 else retry
        if self.max_tokens is not None:
            payload["max_tokens"] = self.max_tokens
        if self.json_mode:
            payload["response_format"] = {"type": "json_object"}
        payload.update(self.extra_body)
        return payload

    def _data_url(self, loaded: LoadedImage) -> str:
        """The image as a JPEG data URL; JPEG files within the size limit are sent byte for byte."""
        image = loaded.image
        too_big = self.max_image_side is not None and max(image.size) > self.max_image_side
        if loaded.format == "JPEG" and not too_big:
            data = loaded.source.read_bytes()
        else:
            if too_big:
                assert self.max_image_side is not None
                image = image.copy()
                image.thumbnail((self.max_image_side, self.max_image_side))
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=self.jpeg_quality)
            data = buffer.getvalue()
        return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")

    def _ask(self, loaded: LoadedImage, prompt: str, attempt: int) -> Answer:
        """One answer for one image, retrying transport failures; never raises for the image."""
        payload = self._payload(loaded, prompt, attempt)
        tries = self.max_retries + 1
        reason = ""
        for number in range(1, tries + 1):
            try:
                return self._post(payload)
            except _Retryable as exc:
                reason = exc.reason
                if number == tries:
                    break
                delay = exc.retry_after if exc.retry_after is not None else self._backoff(number)
                log.warning(
                    "image %r: %s; retrying in %.2fs (%d/%d)",
                    loaded.image_id,
                    reason,
                    delay,
                    number,
                    self.max_retries,
                )
                time.sleep(delay)
            except _Final as exc:
                log.warning("image %r: %s", loaded.image_id, exc)
                return Answer(error=str(exc), transient=exc.setup)
        return Answer(error=f"{reason} (gave up after {tries} tries)", transient=True)

    def _backoff(self, number: int) -> float:
        """Exponential with jitter, so many workers hit by the same outage do not retry in step."""
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** (number - 1)))
        with self._random_lock:
            return ceiling * (0.5 + self._random.random() / 2)

    def _post(self, payload: dict[str, Any]) -> Answer:
        try:
            response = self._client.post(self.endpoint, json=payload)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"no answer within {self.timeout:g}s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection to {self.base_url} failed: {exc or type(exc).__name__}") from None
        status = response.status_code
        if status in RETRYABLE_STATUS:
            headers = response.headers
            retry_after = parse_retry_after(headers.get("retry-after"))
            if retry_after is None and headers.get("retry-after-ms"):
                retry_after = parse_retry_after(str(float(headers["retry-after-ms"]) / 1000.0))
            raise _Retryable(f"HTTP {status} {self._server_message(response)}".rstrip(), retry_after)
        if status >= 400:
            message = self._server_message(response)
            hint = ""
            if status == 400 and self.json_mode and "response_format" in message.lower():
                hint = " (if the server does not support response_format, use json_mode=False)"
            if status in (401, 403):
                hint = f" (check the API key: {' or '.join(API_KEY_VARIABLES)})"
            raise _Final(f"HTTP {status} from {self.endpoint}: {message}{hint}", setup=status in SETUP_STATUS)
        try:
            body = response.json()
            choice = body["choices"][0]
            message = choice.get("message") or {}
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            excerpt = self._redact(response.text[:200])
            raise _Retryable(f"malformed chat-completions response: {excerpt!r}") from None
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if not content and message.get("refusal"):
            content = f"refusal: {message['refusal']}"
        return Answer(text=str(content or ""), truncated=choice.get("finish_reason") == "length")

    def _server_message(self, response: httpx.Response) -> str:
        """The server's own explanation (OpenAI, vLLM and FastAPI error shapes), key redacted."""
        try:
            body = response.json()
        except ValueError:
            body = None
        message: Any = None
        if isinstance(body, dict):
            error = body.get("error")
            message = error.get("message") if isinstance(error, dict) else error
            message = message or body.get("message") or body.get("detail")
        if not message:
            message = response.text.strip() or response.reason_phrase
        return self._redact(" ".join(str(message).split())[:300])

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()


class _Final(Exception):
    """A refusal retrying cannot fix (bad request, auth, model unknown): fails only this image.

    `setup`: the refusal is of the key, the permissions or the model, not of this image.
    """

    def __init__(self, reason: str, *, setup: bool = False) -> None:
        super().__init__(reason)
        self.setup = setup


__all__ = ["API_KEY_VARIABLES", "OpenAICompatibleCaptioner", "parse_retry_after"]
