"""The HTTP API for geospatial portals: a STAC API over an rsrt index, built on stac-fastapi.

`create_app` only wires: rsrt's FastAPI app (lifespan, CORS, rsrt's error handlers, `/healthz`,
`/v1/embeddings`) is handed to stac-fastapi's `StacApi`, which adds the STAC routes and request models
from rsrt's backend (`backend.py`: the core client over one `Searcher`) and extensions
(`extensions.py`: free-text `q`, CQL2 `filter`, `sortby`, `fields`, token paging). Parsing is
`params.py`, serialisation `items.py`, errors `errors.py` (one shape, one table).
"""

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from opensearchpy import OpenSearch
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from stac_fastapi.api.app import StacApi
from stac_fastapi.types.config import ApiSettings

from rsrt import __version__

from ..errors import ConfigError, RsrtError
from ..index import DEFAULT_ALIAS
from ..request import DEFAULT_CANDIDATES, DEFAULT_MODE, MAX_K, EmbedSite, FusionSite, LexicalScope, Mode
from ..searcher import Searcher
from .backend import Queryables, RsrtCoreClient, Service
from .embeddings import install_embeddings_route
from .errors import ErrorBody, install_error_handlers, public_description
from .extensions import CONFORMANCE, api_extensions, request_models
from .files import install_file_routes
from .items import GEOJSON, STAC_VERSION
from .params import SearchPolicy
from .tokens import TokenCodec

__all__ = ["CONFORMANCE", "ApiConfig", "create_app"]

log = logging.getLogger("rsrt.api")
TITLE = "rsrt search"
DESCRIPTION = "Text-to-text retrieval over remote sensing image captions, as a STAC API."


class _Settings(ApiSettings):
    """stac-fastapi's settings from arguments only: its ApiSettings would read STAC_FASTAPI_* variables
    and a .env file, and rsrt's configuration comes from `ApiConfig` (environment only at the CLI edge)."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   **_: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


@dataclass(frozen=True)
class ApiConfig:
    """How `rsrt serve` serves one index; `rsrt serve`'s flags set every field.

    `candidates` is the kNN/hybrid candidate list (raised to `max_limit`): dense and hybrid results page
    through it with a stable order. `token_secret` signs paging tokens; give the same one to every
    worker (and across restarts) so tokens stay valid; by default it is random per process.
    `warm_up` loads the encoder at startup so the first query is not seconds slower.
    """

    index: str = DEFAULT_ALIAS
    cors_origins: tuple[str, ...] = ()
    max_limit: int = 100
    default_mode: str = DEFAULT_MODE
    candidates: int = DEFAULT_CANDIDATES
    token_secret: bytes | str | None = field(default=None, repr=False)
    warm_up: bool = False
    lexical_scope: str = LexicalScope.VARIANT
    fusion_site: str = FusionSite.AUTO
    embed: str = EmbedSite.CLIENT  # a long-running server encodes faster itself than a neural query round trip
    encoder_backend: str = "torch"

    def __post_init__(self) -> None:
        if not 1 <= self.max_limit <= MAX_K:  # the Searcher refuses pages larger than MAX_K
            raise ConfigError(f"max_limit must be between 1 and {MAX_K}")
        if self.default_mode not in {m.value for m in Mode}:
            raise ConfigError(f"default mode {self.default_mode!r} is not one of {', '.join(m.value for m in Mode)}")


def create_app(searcher_factory: Callable[[], Searcher] | None = None, *, client: OpenSearch | None = None,
               config: ApiConfig | None = None, **settings: Any) -> FastAPI:
    """The search API over one index: give a `searcher_factory`, or a `client` (and `config`, or its
    fields as keywords: `create_app(client=c, index="rsrt-images", max_limit=50)`)."""
    config = config or ApiConfig(**{**settings, "cors_origins": tuple(settings.get("cors_origins") or ())})
    if searcher_factory is None:
        if client is None:
            raise ConfigError("create_app needs a searcher_factory, or a client and an index")
        searcher_factory = lambda: Searcher(client, config.index, lexical_scope=config.lexical_scope,  # noqa: E731
                                            encoder_backend=config.encoder_backend)
    service = Service(searcher_factory, SearchPolicy(config.default_mode, config.max_limit,
                                                     max(config.candidates, config.max_limit), config.fusion_site,
                                                     config.embed),
                      TokenCodec(config.token_secret))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if config.warm_up:
            try:
                searcher = service.searcher
                if searcher.encoder_info:
                    searcher.encoder.encode(["warm up"])
            except RsrtError as exc:
                log.warning("warm-up skipped (%s); the encoder loads on the first query", exc)
        yield

    app = FastAPI(title=TITLE, version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    extensions = api_extensions(Queryables(service=service))
    search_get, search_post, items_get = request_models(extensions)
    StacApi(
        settings=_Settings(stac_fastapi_title=TITLE, stac_fastapi_description=DESCRIPTION,
                           stac_fastapi_version=__version__, stac_fastapi_landing_id="rsrt",
                           openapi_url=app.openapi_url, docs_url=app.docs_url),
        client=RsrtCoreClient(service=service, landing_page_id="rsrt", stac_version=STAC_VERSION),
        extensions=extensions, exceptions={}, app=app, title=TITLE, description=DESCRIPTION,
        api_version=__version__, stac_version=STAC_VERSION, search_get_request_model=search_get,
        search_post_request_model=search_post, items_get_request_model=items_get, response_class=JSONResponse,
        # stac-fastapi's defaults allow every CORS origin and trust X-Forwarded-* for links: rsrt's CORS
        # is opt-in per origin, and its public URL comes from the hardening config, not request headers
        middlewares=[],
    )
    # StacApi adds /_mgmt/ping and an always-"UP" /_mgmt/health; /healthz is the real readiness probe
    app.router.routes = [route for route in app.router.routes if not _management_only(route)]
    install_error_handlers(app)  # after StacApi: its own validation handler answers another shape
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=["Retry-After"], max_age=600)
    _install_rsrt_routes(app, service)
    install_embeddings_route(app, lambda: service.searcher)  # OpenAI-compatible, for ml-commons connectors
    install_file_routes(app, lambda: service.searcher)  # the thumbnails and local images items link to
    _document_errors(app)
    return app


def _management_only(route: Any) -> bool:
    """Whether a route (or an included router: FastAPI keeps those whole) serves only /_mgmt/ paths."""
    inner = getattr(getattr(route, "original_router", None), "routes", None)
    paths = [getattr(r, "path", "") for r in inner] if inner else [getattr(route, "path", "")]
    return bool(paths) and all(path.startswith("/_mgmt/") for path in paths)


def _install_rsrt_routes(app: FastAPI, service: Service) -> None:
    """rsrt's own routes beside the STAC ones: items by id alone, ids with a '/', the readiness probe."""
    core = RsrtCoreClient(service=service)
    item_responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {GEOJSON: {}}, "description": "a STAC Item"},
        404: {"model": ErrorBody, "description": "no such item"}}

    @app.get("/items/{item_id:path}", name="get_item_by_id", tags=["items"], responses=item_responses)
    def get_item(request: Request, item_id: str) -> JSONResponse:
        """One item by id, with all its caption variants."""
        return core.get_item(item_id, None, request=request)

    # stac-fastapi's item route takes no '/' in an id; folder sources make ids such as "dir/img.jpg"
    @app.get("/collections/{collection_id}/items/{item_id:path}", name="collection_item", tags=["items"],
             include_in_schema=False)
    def collection_item(request: Request, collection_id: str, item_id: str) -> JSONResponse:
        return core.get_item(item_id, collection_id, request=request)

    @app.get("/healthz", name="healthz", tags=["operations"],
             responses={503: {"description": "the cluster or the index is unavailable"}})
    def healthz() -> JSONResponse:
        """200 when the cluster answers and the index exists; else 503 with the reason (for probes)."""
        searcher = service.searcher
        try:
            status = searcher.status()
        except RsrtError as exc:
            return JSONResponse({"status": "unavailable", "reason": public_description(exc)}, status_code=503)
        if status.cluster == "red":
            return JSONResponse({"status": "unavailable", "reason": "the OpenSearch cluster is red",
                                 "cluster": status.cluster, "index": searcher.index}, status_code=503)
        if not status.exists:
            return JSONResponse({"status": "unavailable", "cluster": status.cluster, "index": searcher.index,
                                 "reason": f"index {searcher.index!r} does not exist"}, status_code=503)
        return JSONResponse({"status": "ok", "cluster": status.cluster, "index": searcher.index,
                             "documents": status.documents})


def _document_errors(app: FastAPI) -> None:
    """FastAPI documents 422 for every route; this API answers bad input with 400 and an unusable
    cluster or index with 503, both as `ErrorBody`."""
    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = default_openapi()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas["ErrorBody"] = ErrorBody.model_json_schema()
        error = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                if path not in ("/", "/conformance", "/healthz"):
                    responses.setdefault("400", {"description": "a parameter is invalid; `field` names it", **error})
                responses.setdefault("503", {"description": "OpenSearch or the index is unavailable", **error})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
