"""`rsrt serve`: the STAC-API-like HTTP search API (rsrt.search.api) under uvicorn, for portals."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import click

from rsrt._cli_common import connection_options, encoder_backend_option, settings_from, user_errors
from rsrt.cli_index import index_option
from rsrt.cli_search import MODES, embed_option, fusion_site_option, lexical_scope_option
from rsrt.search.request import DEFAULT_MODE


def _check_origin(origin: str) -> str:
    """CORS origins are scheme://host[:port] exactly as browsers send them; a path would never match."""
    if origin == "*":
        return origin
    parts = urlsplit(origin)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path not in {"", "/"} or parts.query:
        raise click.BadParameter(f"{origin!r} is not an origin such as https://portal.example.org",
                                 param_hint="--cors-origin")
    return origin.rstrip("/")


@click.command("serve")
@index_option
@connection_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="address to listen on (0.0.0.0 exposes the API to the network)")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="browser origin allowed to call the API, e.g. https://portal.example.org (repeatable; "
                   "default none)")
@click.option("--max-limit", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="largest `limit` (items per page) a client may ask for")
@click.option("--default-mode", type=click.Choice(MODES), default=DEFAULT_MODE.value,
              show_default=True, help="mode used when a request gives `q` but no `mode`")
@click.option("--candidates", default=100, show_default=True, type=click.IntRange(1, 1000),
              help="dense/hybrid candidate list: how deep those results can be paged")
@click.option("--token-secret", envvar="RSRT_API_TOKEN_SECRET", default=None, show_envvar=False,
              help="key signing paging tokens; set it so tokens survive restarts [env RSRT_API_TOKEN_SECRET; "
                   "default random per process]")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
@encoder_backend_option
@fusion_site_option
@lexical_scope_option
@embed_option("client")
@user_errors
def serve(index_name: str, host: str, port: int, cors_origins: tuple[str, ...], max_limit: int, default_mode: str,
          candidates: int, token_secret: str | None, log_level: str, encoder_backend: str, fusion_site: str,
          lexical_scope: str, embed: str, **kwargs: Any) -> None:
    """Serve the STAC API (/, /conformance, /collections…, GET/POST /search), /healthz and /docs over HTTP."""
    import uvicorn

    from rsrt.search.api import ApiConfig, create_app
    from rsrt.search.client import connect

    config = ApiConfig(index=index_name, cors_origins=tuple(_check_origin(origin) for origin in cors_origins),
                       max_limit=max_limit, default_mode=default_mode, candidates=candidates,
                       token_secret=token_secret, warm_up=True, lexical_scope=lexical_scope, fusion_site=fusion_site,
                       encoder_backend=encoder_backend, embed=embed)
    app = create_app(client=connect(settings_from(kwargs)), config=config)
    click.echo(f"rsrt search API on http://{host}:{port} (index {index_name}; docs at /docs)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


if __name__ == "__main__":  # pragma: no cover - `python -m rsrt.cli_serve` until registered in rsrt.cli
    serve()
