"""The one composition `rsrt serve` runs: the API, hardening, image queries and the file routes.

`build_server_app(client, ServerConfig(...))` calls `create_app` (the STAC API with its thumbnail and
asset routes) and installs on the app it returns `install_image_query_route` and `install_hardening`.
One `Searcher` serves every route: the encoder is loaded once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from opensearchpy import OpenSearch

from ..errors import ConfigError
from ..searcher import Searcher
from .app import ApiConfig, create_app
from .hardening import HardeningConfig, install_hardening
from .image_query import ImageQueryLimits, install_image_query_route, once
from .params import SearchPolicy

CAPTIONER_KINDS = ("openai", "transformers")
# An HTTP client waits for the answer: a shorter budget than ingest's (180 s, 5 retries), which can wait.
SERVE_VLM_TIMEOUT = 60.0
SERVE_VLM_RETRIES = 1
SERVE_VLM_IMAGE_SIZE = 1024  # ingest's --max-image-side default: queries are seen at the archive's size


@dataclass(frozen=True)
class CaptionerSettings:
    """The VLM for image queries, by the same flags as `rsrt search --image` / `rsrt ingest images`.

    `kind` None: no captioner (image queries answer 501). For "openai", unset `timeout`, `retries` and
    `image_size` take the server's budget (`SERVE_VLM_*`); other kinds take none of them.
    """

    kind: str | None = None
    model: str | None = None
    vlm_url: str | None = None
    concurrency: int = 4
    device: str = "auto"
    dtype: str = "auto"
    timeout: float | None = None
    retries: int | None = None
    max_tokens: int | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind is None:
            given = [flag for flag, value in (("--model", self.model), ("--vlm-timeout", self.timeout),
                                              ("--vlm-retries", self.retries), ("--vlm-image-size", self.image_size),
                                              ("--vlm-max-tokens", self.max_tokens)) if value is not None]
            if given:
                raise ConfigError(f"{', '.join(given)} need --captioner (the VLM for image queries)")
            return
        if self.kind not in CAPTIONER_KINDS:
            raise ConfigError(f"unknown captioner {self.kind!r}; valid: {', '.join(CAPTIONER_KINDS)}")
        if not self.model:
            raise ConfigError(f"--captioner {self.kind} needs --model")
        if self.kind == "openai" and not self.vlm_url:
            raise ConfigError("--captioner openai needs --vlm-url (or RSRT_VLM_URL)")
        if self.concurrency < 1:
            raise ConfigError(f"--vlm-concurrency must be at least 1, got {self.concurrency}")

    @property
    def configured(self) -> bool:
        return self.kind is not None

    def build(self) -> Any:
        """The captioner, through `captioner_from_flags` (the CLI's own mapping of these flags)."""
        from rsrt.ingest.captioners import captioner_from_flags

        assert self.kind is not None
        if self.kind == "openai":
            budget = {"timeout": SERVE_VLM_TIMEOUT if self.timeout is None else self.timeout,
                      "retries": SERVE_VLM_RETRIES if self.retries is None else self.retries,
                      "image_size": SERVE_VLM_IMAGE_SIZE if self.image_size is None else self.image_size}
        else:
            budget = {"timeout": self.timeout, "retries": self.retries, "image_size": self.image_size}
        return captioner_from_flags(self.kind, model=self.model, base_url=self.vlm_url, concurrency=self.concurrency,
                                    device=self.device, dtype=self.dtype, batch_size=1, max_tokens=self.max_tokens,
                                    **budget)


@dataclass(frozen=True)
class ServerConfig:
    """Everything `rsrt serve` serves with: the API, how it faces the network, the image-query VLM."""

    api: ApiConfig = field(default_factory=ApiConfig)
    hardening: HardeningConfig = field(default_factory=HardeningConfig)
    captioner: CaptionerSettings = field(default_factory=CaptionerSettings)


def build_server_app(client: OpenSearch, config: ServerConfig) -> FastAPI:
    """The app `rsrt serve` runs: `create_app` over `client`, hardened, with image queries and files."""
    api = config.api
    searcher = once(lambda: Searcher(client, api.index, lexical_scope=api.lexical_scope,
                                     encoder_backend=api.encoder_backend))
    app = create_app(searcher, config=api)
    captioner = once(config.captioner.build) if config.captioner.configured else None
    policy = SearchPolicy(api.default_mode, api.max_limit, max(api.candidates, api.max_limit), api.fusion_site,
                          api.embed)
    install_image_query_route(app, searcher, captioner,
                              ImageQueryLimits(policy, max_bytes=config.hardening.max_image_bytes))
    install_hardening(app, config.hardening)
    return app


__all__ = ["CaptionerSettings", "ServerConfig", "build_server_app"]
