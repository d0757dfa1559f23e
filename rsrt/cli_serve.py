"""`rsrt serve`: the STAC-API-like HTTP search API (rsrt.search.api) under uvicorn, for portals.

Only parses: the flags become a `ServerConfig`, and `build_server_app` composes the app.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import click

from rsrt._cli_common import connection_options, encoder_backend_option, settings_from, user_errors
from rsrt.cli_index import index_option
from rsrt.cli_search import MODES, embed_option, fusion_site_option, lexical_scope_option
from rsrt.search.request import DEFAULT_MODE

WILDCARD_ADDRESSES = ("0.0.0.0", "::", "")


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
@click.option("--public-url", envvar="RSRT_API_PUBLIC_URL", default=None,
              help="where clients reach the API, e.g. https://portal.example.org/stac/ (behind a proxy): every "
                   "link starts with it, whatever Host header a client sends [env RSRT_API_PUBLIC_URL]")
@click.option("--trusted-host", "trusted_hosts", multiple=True,
              help="without --public-url: a Host header links may be built from (repeatable; *.example.org for "
                   "sub-domains, * for any); other hosts are refused (400) [default: localhost, 127.0.0.1, "
                   "::1 and --host]")
@click.option("--max-body-bytes", type=click.IntRange(1), default=None,
              help="largest request body (JSON searches); refused with 413 while it arrives [default 1 MiB]")
@click.option("--max-image-bytes", type=click.IntRange(1), default=None,
              help="largest image upload for POST /search/image [default 20 MiB]")
@encoder_backend_option
@fusion_site_option
@lexical_scope_option
@embed_option("client")
@click.option("--captioner", type=click.Choice(["openai", "transformers"]), default=None,
              help="VLM that turns a query image into text (POST /search/image); without it image queries "
                   "answer 501")
@click.option("--model", default=None, help="VLM for image queries: model name (openai) or local path (transformers)")
@click.option("--vlm-url", envvar="RSRT_VLM_URL", default=None,
              help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 [env RSRT_VLM_URL]")
@click.option("--vlm-concurrency", default=4, show_default=True, type=click.IntRange(1),
              help="parallel VLM requests (openai)")
@click.option("--device", default="auto", show_default=True, help="transformers device")
@click.option("--dtype", default="auto", show_default=True, help="transformers dtype")
@click.option("--vlm-timeout", type=float, default=None,
              help="seconds to wait for one VLM answer (openai) [default 60: a client is waiting]")
@click.option("--vlm-retries", type=int, default=None,
              help="retries of one VLM request on 429/5xx/timeouts (openai) [default 1]")
@click.option("--vlm-max-tokens", type=int, default=None, help="token limit of one VLM answer")
@click.option("--vlm-image-size", type=int, default=None,
              help="downscale the query image to at most this many pixels on its longer side before sending it "
                   "(openai) [default 1024, ingest's --max-image-side]")
@user_errors
def serve(index_name: str, host: str, port: int, cors_origins: tuple[str, ...], max_limit: int, default_mode: str,
          candidates: int, token_secret: str | None, log_level: str, public_url: str | None,
          trusted_hosts: tuple[str, ...], max_body_bytes: int, max_image_bytes: int, encoder_backend: str,
          fusion_site: str, lexical_scope: str, embed: str, captioner: str | None, model: str | None,
          vlm_url: str | None, vlm_concurrency: int, device: str, dtype: str, vlm_timeout: float | None,
          vlm_retries: int | None, vlm_max_tokens: int | None, vlm_image_size: int | None, **kwargs: Any) -> None:
    """Serve the STAC API (/, /conformance, /collections…, GET/POST /search, POST /search/image), /healthz
    and /docs over HTTP."""
    import uvicorn

    from rsrt.search.api import ApiConfig
    from rsrt.search.api.hardening import LOOPBACK_HOSTS, HardeningConfig
    from rsrt.search.api.server import CaptionerSettings, ServerConfig, build_server_app
    from rsrt.search.client import connect

    api = ApiConfig(index=index_name, cors_origins=tuple(_check_origin(origin) for origin in cors_origins),
                    max_limit=max_limit, default_mode=default_mode, candidates=candidates,
                    token_secret=token_secret, warm_up=True, lexical_scope=lexical_scope, fusion_site=fusion_site,
                    encoder_backend=encoder_backend, embed=embed)
    hosts = trusted_hosts or (*LOOPBACK_HOSTS, *(() if host in WILDCARD_ADDRESSES else (host,)))
    limits = {name: value for name, value in (("max_body_bytes", max_body_bytes),
                                              ("max_image_bytes", max_image_bytes)) if value is not None}
    hardening = HardeningConfig(public_url=public_url, trusted_hosts=tuple(hosts), **limits)
    vlm = CaptionerSettings(kind=captioner, model=model, vlm_url=vlm_url, concurrency=vlm_concurrency, device=device,
                            dtype=dtype, timeout=vlm_timeout, retries=vlm_retries, max_tokens=vlm_max_tokens,
                            image_size=vlm_image_size)
    app = build_server_app(connect(settings_from(kwargs)), ServerConfig(api=api, hardening=hardening, captioner=vlm))
    shown = public_url or f"http://{host}:{port}"
    click.echo(f"rsrt search API on http://{host}:{port} (index {index_name}; links to {shown}; docs at /docs)",
               err=True)
    if host in WILDCARD_ADDRESSES and not public_url and not trusted_hosts:
        click.echo("note: only loopback Host headers are trusted; give --public-url (or --trusted-host) for "
                   "clients on the network", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


if __name__ == "__main__":  # pragma: no cover - `python -m rsrt.cli_serve` until registered in rsrt.cli
    serve()
