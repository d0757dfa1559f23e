"""`rsrt search`: one query, any mode, with place/time filters; a table, JSON, or the exact DSL."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from typing import Any

import click

from rsrt._cli_common import connection_options, encoder_backend_option, settings_from, user_errors
from rsrt.cli_index import index_option
from rsrt.search.errors import QueryError
from rsrt.search.fusion import DEFAULT_RANK_CONSTANT, DEFAULT_TECHNIQUE, DEFAULT_WEIGHTS, FUSIONS
from rsrt.search.request import DEFAULT_MODE, EmbedSite, FusionSite, LexicalScope, Mode

MODES = [m.value for m in Mode]
FUSION_SITES = [s.value for s in FusionSite]
EMBED_SITES = [s.value for s in EmbedSite]
LEXICAL_SCOPES = [s.value for s in LexicalScope]


# The value objects name a wrong value by its API parameter; on the command line it is an option.
OPTION_NAMES = {"q": "QUERY", "mode": "--mode", "limit": "--k", "offset": "--offset", "candidates": "--candidates",
                "ef_search": "--ef-search", "fusion_site": "--fusion-site", "embed": "--embed", "fusion": "--fusion",
                "rank_constant": "--rank-constant", "weights": "--weights", "bbox": "--bbox",
                "intersects": "--intersects", "datetime": "--datetime", "collections": "--collections",
                "properties": "--property"}


@contextlib.contextmanager
def _named_by_option() -> Iterator[None]:
    """A QueryError from the value objects or the searcher says which option was wrong (one line, exit 2)."""
    try:
        yield
    except QueryError as exc:
        option = OPTION_NAMES.get(exc.field)
        if option is None:
            raise
        raise QueryError(option, exc.detail) from None


def _weights(value: str | None) -> tuple[float, float] | None:
    if value is None:
        return None
    try:
        lexical, dense = (float(part) for part in value.split(","))
    except ValueError:
        raise QueryError("--weights", "give two numbers: lexical,dense (e.g. 0.3,0.7)") from None
    return lexical, dense  # FusionSpec checks them (finite, ≥ 0, not both 0)


def _properties(pairs: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for pair in pairs:
        if "=" not in pair:
            raise QueryError("--property", f"{pair!r} is not key=value")
        key, value = pair.split("=", 1)
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def fusion_site_option(func):
    return click.option("--fusion-site", "--hybrid-backend", "fusion_site", type=click.Choice(FUSION_SITES),
                        default="auto", show_default=True,
                        help="where hybrid fusion runs: auto = client-side (faster; docs/performance), or "
                             "server-side through a search pipeline")(func)


def embed_option(default: str):
    def decorate(func):
        return click.option("--embed", type=click.Choice(EMBED_SITES), default=default, show_default=True,
                            help="where the query text becomes a vector: client = rsrt's encoder, cluster = the "
                                 "index's model in OpenSearch (ml-commons; a plain-text `neural` query), auto = "
                                 "cluster when the index has a model there")(func)

    return decorate


def lexical_scope_option(func):
    return click.option("--lexical-scope", type=click.Choice(LEXICAL_SCOPES), envvar="RSRT_LEXICAL_SCOPE",
                        default="variant", show_default=True,
                        help="BM25 per variant (max) or over each image's whole text (8x faster at 100k) "
                             "[env RSRT_LEXICAL_SCOPE]")(func)


@click.command("search")
@click.argument("query", required=False)
@index_option
@connection_options
@click.option("--mode", type=click.Choice(MODES), default=DEFAULT_MODE.value, show_default=True)
@click.option("--k", "--limit", "k", default=10, show_default=True, help="results per page")
@click.option("--offset", default=0, show_default=True, help="skip this many results (paging)")
@click.option("--bbox", default=None, help="west,south,east,north (WGS84)")
@click.option("--intersects", default=None, help="GeoJSON geometry (inline JSON or @file.geojson)")
@click.option("--datetime", "datetime_", default=None, help="instant or start/end, '..' for open ends")
@click.option("--collections", default=None, help="comma-separated collection ids")
@click.option("--property", "properties", multiple=True, help="key=value on item properties (repeatable)")
@click.option("--fusion", type=click.Choice(FUSIONS), default=DEFAULT_TECHNIQUE, show_default=True)
@click.option("--weights", default=None,
              help=f"hybrid weights lexical,dense [default {DEFAULT_WEIGHTS[0]:g},{DEFAULT_WEIGHTS[1]:g}, tuned on "
                   "train splits: docs/evaluation-defaults.md]")
@click.option("--rank-constant", default=DEFAULT_RANK_CONSTANT, show_default=True, help="RRF rank constant")
@click.option("--candidates", default=100, show_default=True, help="candidates per sub-query (kNN k)")
@click.option("--ef-search", type=int, default=None,
              help="HNSW beam for this query [default: 200, never below the depth]")
@encoder_backend_option
@fusion_site_option
@lexical_scope_option
@embed_option("auto")
@click.option("--image", "image_path", default=None, help="query by an image: path (needs --captioner)")
@click.option("--captioner", type=click.Choice(["openai", "transformers"]), default=None)
@click.option("--model", default=None, help="VLM model for --image")
@click.option("--vlm-url", envvar="RSRT_VLM_URL", default=None)
@click.option("--explain", is_flag=True, help="per hit: lexical and dense contributions, matched variant")
@click.option("--show-dsl", is_flag=True, help="print the OpenSearch request (paste into Dev Tools) and exit")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def search_command(query: str | None, index_name: str, mode: str, k: int, offset: int, bbox: str | None,
                   intersects: str | None, datetime_: str | None, collections: str | None,
                   properties: tuple[str, ...], fusion: str, weights: str | None, rank_constant: int,
                   candidates: int, ef_search: int | None, encoder_backend: str, fusion_site: str,
                   lexical_scope: str, embed: str, image_path: str | None, captioner: str | None, model: str | None,
                   vlm_url: str | None, explain: bool, show_dsl: bool, as_json: bool, **kwargs: Any) -> None:
    """Search images by text (QUERY) or by an image (--image): T2T over the caption variants."""
    from rsrt.search.client import connect
    from rsrt.search.errors import ConfigError
    from rsrt.search.filters import Filters, complete_dates
    from rsrt.search.fusion import FusionSpec
    from rsrt.search.request import SearchRequest
    from rsrt.search.searcher import Searcher

    with _named_by_option():
        for option, given in (("--bbox", bbox), ("--intersects", intersects), ("--datetime", datetime_),
                              ("--collections", collections)):
            if given is not None and not given.strip():  # an unset shell variable must not drop the filter
                raise QueryError(option, "is empty")
        filters = Filters.build(bbox=bbox, intersects=_geometry(intersects), datetime=complete_dates(datetime_),
                                collections=collections, properties=_properties(properties))
        spec = FusionSpec(fusion, _weights(weights) or DEFAULT_WEIGHTS, rank_constant)
        if image_path:
            query = _describe_image(image_path, captioner, model, vlm_url)
        if not query:
            raise ConfigError("give a QUERY text or --image")
        request = SearchRequest(query, mode, k, offset, filters, spec, candidates, ef_search, fusion_site, explain,
                                embed=embed)
        searcher = Searcher(connect(settings_from(kwargs)), index_name, lexical_scope=lexical_scope,
                            encoder_backend=encoder_backend)
        if show_dsl:
            body, params = searcher.build_request(request)
            query_string = "&".join(f"{key}={value}" for key, value in params.items())
            target = f"GET {index_name}/_search" + (f"?{query_string}" if query_string else "")
            click.echo(target)
            click.echo(json.dumps(body, indent=2))
            return
        results = searcher.search(request)
    _print_results(results, explain, as_json)


def _geometry(intersects: str | None) -> Any:
    """--intersects: inline GeoJSON or @file."""
    from rsrt.search.errors import ConfigError

    if not intersects:
        return None
    if intersects.startswith("@"):
        try:
            with open(intersects[1:], encoding="utf-8") as handle:
                intersects = handle.read()
        except OSError as exc:
            raise ConfigError(f"--intersects {intersects}: cannot read the file ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"--intersects {intersects}: the file is not UTF-8 text (GeoJSON is)") from None
    try:
        return json.loads(intersects)
    except (ValueError, RecursionError) as exc:
        where = f" ({exc})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigError(f"--intersects is not valid JSON{where}") from None


def _describe_image(image_path: str, captioner: str | None, model: str | None, vlm_url: str | None) -> str:
    """The VLM turns the query image into query text (the same prompt family as ingest's captions)."""
    from rsrt.ingest.captioners import ImageInput, captioner_from_flags
    from rsrt.search.errors import ConfigError

    if captioner is None or not model:
        raise ConfigError("--image needs --captioner and --model (the VLM turns the image into query text)")
    vlm = captioner_from_flags(captioner, model=model, base_url=vlm_url, concurrency=1, batch_size=1)
    try:
        return vlm.describe(ImageInput(image_id="query", path=image_path)).labelled_text()
    finally:
        vlm.close()


def _print_results(results: Any, explain: bool, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({
            "query": results.query, "mode": results.mode, "total": results.total, "offset": results.offset,
            "took_ms": results.took_ms, "hybrid_backend": results.fusion_site, "embed": results.embed,
            "hits": [{"rank": h.rank, "image_id": h.image_id, "score": h.score, "caption": h.best_caption(),
                      "matched_variant": h.matched_variant, "explanation": h.explanation,
                      "collection": h.source.get("collection"), "datetime": h.source.get("datetime")}
                     for h in results.hits],
        }, indent=2, ensure_ascii=False))
        return
    width = max(60, shutil.get_terminal_size((120, 20)).columns - 40)
    site = f", {results.fusion_site}-side fusion" if results.fusion_site else ""
    site += ", embedded in the cluster" if results.embed == "cluster" else ""
    click.echo(f"{results.mode}{site}: {results.total} match(es), {results.took_ms:.0f} ms")
    click.echo(f"{'rank':>4}  {'image':<24} {'score':>8}  best-matching caption")
    for hit in results.hits:
        caption = " ".join(hit.best_caption().split())
        click.echo(f"{hit.rank:>4}  {hit.image_id[:24]:<24} {hit.score:>8.4f}  {caption[:width]}")
        if explain and hit.explanation:
            click.echo(f"{'':>4}  {json.dumps(hit.explanation)}")
