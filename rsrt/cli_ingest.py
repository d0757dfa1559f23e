"""`rsrt ingest images | captions | benchmark | stac-api`: read → caption → embed → write, resumable."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rsrt._cli_common import connection_options, encoder_backend_option, settings_from, user_errors
from rsrt.cli_index import index_option
from rsrt.search.encoder import DEFAULT_BATCH_SIZE
from rsrt.search.index import QUANTIZATIONS

if TYPE_CHECKING:
    from rsrt.ingest.config import IngestConfig
    from rsrt.search.config import ConnectionSettings


def ingest_options(func):
    options = [
        index_option,
        connection_options,
        click.option("--encoder", default="all-MiniLM-L6-v2", show_default=True, help="sentence encoder"),
        encoder_backend_option,
        click.option("--embed", type=click.Choice(["client", "cluster"]), default="client", show_default=True,
                     help="who embeds the variants: client (the encoder here) or cluster (the index's ml-commons "
                          "model, through its embedding ingest pipeline; no encoder is loaded here)"),
        click.option("--no-cluster-model", is_flag=True,
                     help="do not deploy the encoder in the cluster (by default it is, when the cluster has "
                          "ml-commons, so Dashboards and other clients can search by plain text)"),
        click.option("--batch-size", default=64, show_default=True, help="images per batch through the stages"),
        click.option("--encode-batch-size", default=DEFAULT_BATCH_SIZE, show_default=True,
                     help="texts per encoder forward pass"),
        click.option("--workers", default=2, show_default=True, help="concurrent bulk writers"),
        click.option("--collection", default=None, help="collection name for every record"),
        click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="checkpoint, caption cache, quarantine, dead letters [default .rsrt/<index>]"),
        click.option("--shard", "shard", default=None, metavar="K/N",
                     help="ingest only shard K of N (1 <= K <= N) of the source, so N machines or processes share "
                          "one archive without overlap (chips of one scene stay together); each shard keeps its "
                          "own state [default state dir .rsrt/<index>/shard-K-of-N]"),
        click.option("--dry-run", is_flag=True, help="read, caption and embed, but write nothing"),
        click.option("--overwrite", is_flag=True, help="rewrite images that are already indexed"),
        click.option("--retry-quarantined", is_flag=True,
                     help="try again the items an earlier run quarantined (they are skipped otherwise)"),
        click.option("--max-retries", default=6, show_default=True,
                     help="the one retry budget: attempts per bulk batch when the cluster is unreachable, times "
                          "out or rejects with HTTP 429 (back-off 2s, 4s, ... 30s); then the run stops, resumable"),
        click.option("--thumbnail-size", type=click.IntRange(0), default=256, show_default=True,
                     help="longest side in pixels of the small JPEG kept in each document for portals, made from "
                          "the picture the VLM is shown (images without captions), else from the image file when "
                          "there is one; 0: no thumbnails"),
        click.option("--quantization", type=click.Choice(QUANTIZATIONS), default=None,
                     help="vector storage of a new index: float32, or the lucene engine's 7-bit scalar quantisation "
                          "(docs/performance/scale/); an existing index keeps its own, and asking it for another is "
                          "refused [default: none]"),
        click.option("--json", "as_json", is_flag=True, help="print the summary as JSON"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def captioner_options(func):
    options = [
        click.option("--captioner", type=click.Choice(["openai", "transformers"]), default=None,
                     help="VLM that writes the five variants (images need one)"),
        click.option("--model", default=None, help="VLM: local path (transformers) or model name (openai)"),
        click.option("--vlm-url", envvar="RSRT_VLM_URL", default=None,
                     help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1 [env RSRT_VLM_URL]"),
        click.option("--vlm-concurrency", default=4, show_default=True, help="parallel VLM requests (openai)"),
        click.option("--device", default="auto", show_default=True, help="transformers device"),
        click.option("--dtype", default="auto", show_default=True, help="transformers dtype"),
        click.option("--vlm-timeout", type=float, default=None,
                     help="seconds to wait for one VLM answer (openai) [default 180]"),
        click.option("--vlm-retries", type=int, default=None,
                     help="retries of one VLM request on 429/5xx/timeouts/refused connections (openai) [default 5]"),
        click.option("--vlm-max-tokens", type=int, default=None,
                     help="token limit of one VLM answer [default 2048 openai, 1536 transformers]"),
        click.option("--vlm-image-size", type=int, default=None,
                     help="downscale every picture (JPEG and PNG too) to at most this many pixels on its longer "
                          "side before sending it (openai); rasters are first rendered at --max-image-side "
                          "[default: sent as they are]"),
        click.option("--min-variants", type=click.IntRange(1, 5), default=1, show_default=True,
                     help="keep a VLM answer with at least this many valid variants (of the five asked for)"),
        click.option("--strict-variants", is_flag=True,
                     help="only accept VLM answers with five valid variants (retried, then quarantined)"),
        click.option("--max-consecutive-failures", type=click.IntRange(0), default=20, show_default=True,
                     help="stop the run (exit 1) when the VLM fails this many images in a row; they are "
                          "retried by the next run (0: never stop)"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _vlm_flags(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The captioner's tuning flags, popped out of a command's kwargs, as `captioner_from_flags` options."""
    return {"timeout": kwargs.pop("vlm_timeout"), "retries": kwargs.pop("vlm_retries"),
            "max_tokens": kwargs.pop("vlm_max_tokens"), "image_size": kwargs.pop("vlm_image_size"),
            "min_variants": kwargs.pop("min_variants"), "strict_variants": kwargs.pop("strict_variants")}


def raster_options(func):
    """How (Geo)TIFF scenes become VLM pictures, and whether they are cut into chips (rsrt.ingest.raster)."""
    options = [
        click.option("--bands", default=None,
                     help="bands shown to the VLM, 1-based like GDAL: 4,3,2 (R,G,B) or 1 (grey) [default: STAC "
                          "eo:bands red/green/blue, else the file's band descriptions or colour interpretation, "
                          "else the first three]"),
        click.option("--stretch", default="auto", show_default=True,
                     help="values to 0-255: pLOW,HIGH per-band percentiles of valid pixels (e.g. p2,98), MIN,MAX a "
                          "fixed range (in raster:bands physical units when the item gives scale/offset), none, or "
                          "auto (none for uint8, p2,98 otherwise)"),
        click.option("--max-image-side", type=int, default=1024, show_default=True,
                     help="longest side of the picture sent to the VLM; rasters are read decimated (overviews)"),
        click.option("--chip-size", type=int, default=None,
                     help="cut each (Geo)TIFF scene into square chips of this many pixels, one record each (id "
                          "<scene>_x<col>_y<row>_<w>x<h>, own footprint, rsrt:scene = the scene's id); edge chips are "
                          "shifted inward so every chip is full size; the scene itself is not a record"),
        click.option("--chip-overlap", type=int, default=0, show_default=True,
                     help="pixels shared by neighbouring chips"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _raster(kwargs: dict[str, Any]) -> Any:
    """The raster flags (popped out of a command's kwargs) as `RasterOptions`."""
    from rsrt.ingest.raster import RasterOptions

    return RasterOptions.from_flags(bands=kwargs.pop("bands"), stretch=kwargs.pop("stretch"),
                                    max_side=kwargs.pop("max_image_side"), chip_size=kwargs.pop("chip_size"),
                                    chip_overlap=kwargs.pop("chip_overlap"))


def asset_options(func):
    """How remote assets (http(s)://, s3:// in STAC items) are read (rsrt.ingest.assets)."""
    options = [
        click.option("--asset-timeout", type=float, default=30.0, show_default=True,
                     help="seconds per request for a remote asset (http(s), s3)"),
        click.option("--asset-retries", type=int, default=4, show_default=True,
                     help="extra attempts per remote asset on 5xx, 429, timeouts and refused connections (delay "
                          "doubling from 1 s, at most 30 s, Retry-After honoured); an asset still unreachable is "
                          "quarantined and tried again by the next run, a 404/403 is quarantined for good"),
        click.option("--s3-endpoint", default=None, envvar=["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"],
                     help="S3-compatible endpoint for s3:// assets, e.g. http://127.0.0.1:9000 (MinIO) "
                          "[env: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL; default: AWS]; credentials: the standard "
                          "AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws)"),
        click.option("--s3-region", default=None, envvar=["AWS_REGION", "AWS_DEFAULT_REGION"],
                     help="region of s3:// assets [env: AWS_REGION, AWS_DEFAULT_REGION]"),
        click.option("--s3-no-sign-request", is_flag=True, default=False,
                     help="read s3:// assets of public buckets without credentials"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _assets(kwargs: dict[str, Any]) -> Any:
    """The remote-asset flags (popped out of a command's kwargs) as `AssetOptions`."""
    from rsrt.ingest.assets import AssetOptions

    return AssetOptions(timeout=kwargs.pop("asset_timeout"), retries=kwargs.pop("asset_retries"),
                        s3_endpoint=kwargs.pop("s3_endpoint") or None, s3_region=kwargs.pop("s3_region") or None,
                        s3_no_sign_request=kwargs.pop("s3_no_sign_request"))


@dataclasses.dataclass(frozen=True)
class _ImageRun:
    """What the commands that caption images share, from their flags: the run, the rendering, the VLM."""

    config: IngestConfig
    settings: ConnectionSettings
    as_json: bool
    raster: Any  # RasterOptions
    vlm: dict[str, Any]  # `captioner_from_flags` arguments; no "kind": no captioner

    def captioner(self) -> Any | None:
        """The VLM, made only now: a bad source is reported before a model loads."""
        from rsrt.ingest.captioners import captioner_from_flags

        if self.vlm.get("kind") is None:
            return None
        options = dict(self.vlm)
        return captioner_from_flags(options.pop("kind"), batch_size=min(self.config.batch_size, 8), **options)


def _image_run(kwargs: dict[str, Any], *, captioner: str | None, model: str | None, vlm_url: str | None,
               vlm_concurrency: int, device: str, dtype: str) -> _ImageRun:
    """The flags of `ingest images` / `ingest stac-api` (popped out of kwargs) as one value."""
    raster = _raster(kwargs)
    assets = _assets(kwargs)
    vlm = {"kind": captioner, "model": model, "base_url": vlm_url, "concurrency": vlm_concurrency,
           "device": device, "dtype": dtype, **_vlm_flags(kwargs)}
    max_consecutive_failures = kwargs.pop("max_consecutive_failures")
    config, settings, as_json = _config(kwargs)
    config = dataclasses.replace(config, max_consecutive_failures=max_consecutive_failures, assets=assets)
    return _ImageRun(config, settings, as_json, raster, vlm)


@contextlib.contextmanager
def progress_bar(total: int | None, disable: bool = False) -> Iterator[Callable[[Any], None]]:
    """A tqdm bar on stderr while a run goes; yields the `progress` callback `run_ingest` takes.

    The bar appears with the first progress, so an error before any (no cluster) prints alone.
    """
    from tqdm import tqdm

    bars: list[Any] = []
    lock = threading.Lock()  # the writer threads report

    def progress(stats: Any) -> None:
        with lock:
            if not bars:
                bars.append(tqdm(total=total, unit="img", desc="ingest", disable=disable, leave=False))
        bar = bars[0]
        bar.n = stats.ingested + stats.skipped + stats.quarantined + stats.failed
        bar.set_postfix_str(" ".join(f"{k}={v:.1f}s" for k, v in stats.stage_seconds.items()), refresh=False)
        bar.refresh()

    try:
        yield progress
    finally:
        for bar in bars:
            bar.close()


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{summary['source']} -> {summary['index']}")
    click.echo(f"  ingested {summary['ingested']}, skipped {summary['skipped']} (already indexed), "
               f"quarantined {summary['quarantined']}, failed {summary['failed']}")
    if "shard" in summary:
        click.echo(f"  shard {summary['shard']}: {summary['left_to_other_shards']} items left to the other shards")
    if summary.get("deferred"):
        click.echo(f"  {summary['deferred']} of the quarantined failed for the VLM's or the asset server's sake "
                   "(unreachable, overloaded, refused the key or model): they are retried by the next run")
    if summary.get("partial"):
        click.echo(f"  {summary['partial']} images kept fewer than 5 variants: the VLM's other ones were invalid "
                   "(--strict-variants refuses such answers)")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in summary["stage_seconds"].items())
    click.echo(f"  {summary['wall_seconds']:.1f}s wall, {summary['docs_per_second']:.1f} docs/s; stages: {stages}")
    for line in summary.get("warnings", []):
        click.echo(f"  warning: {line}")
    if summary.get("warning_count", 0) > len(summary.get("warnings", [])):
        click.echo(f"  ... {summary['warning_count'] - len(summary['warnings'])} more warnings (see the log)")
    if "quarantine" in summary:
        click.echo(f"  quarantined items and reasons: {summary['quarantine']}")
    if "dead_letters" in summary:
        click.echo(f"  refused documents: {summary['dead_letters']}")


def _config(kwargs: dict[str, Any]) -> tuple[IngestConfig, ConnectionSettings, bool]:
    """The ingest flags (popped out of a command's kwargs) as a config, the connection, and --json."""
    from rsrt.ingest.config import IngestConfig
    from rsrt.ingest.shards import Shard
    from rsrt.ingest.thumbnails import ThumbnailOptions

    shard = kwargs.pop("shard")
    config = IngestConfig(
        index=kwargs.pop("index_name"), encoder=kwargs.pop("encoder"), encoder_backend=kwargs.pop("encoder_backend"),
        batch_size=kwargs.pop("batch_size"), encode_batch_size=kwargs.pop("encode_batch_size"),
        workers=kwargs.pop("workers"), state_dir=kwargs.pop("state_dir"), dry_run=kwargs.pop("dry_run"),
        overwrite=kwargs.pop("overwrite"), retry_quarantined=kwargs.pop("retry_quarantined"),
        max_retries=kwargs.pop("max_retries"), embed=kwargs.pop("embed"),
        cluster_model=not kwargs.pop("no_cluster_model"), shard=None if shard is None else Shard.parse(shard),
        thumbnails=ThumbnailOptions(size=kwargs.pop("thumbnail_size")), quantization=kwargs.pop("quantization"),
    )
    return config, settings_from(kwargs), kwargs.pop("as_json")


def _ingest(source: Any, config: IngestConfig, settings: ConnectionSettings, as_json: bool,
            captioner: Any | None = None) -> dict[str, Any]:
    from rsrt.ingest.run import run_ingest

    with progress_bar(source.count_hint(), disable=as_json) as progress:
        return run_ingest(source, config, settings, captioner=captioner, progress=progress).as_dict()


def _finish(summary: dict[str, Any], as_json: bool) -> None:
    from rsrt.ingest.run import exit_code

    print_summary(summary, as_json)
    code = exit_code(summary)  # 3: documents refused; 4: nothing indexed, items quarantined
    if code:
        raise SystemExit(code)


@click.group()
def ingest() -> None:
    """Bulk-load images, STAC catalogs and APIs, caption files or benchmark splits into an index.

    Exit status: 0 done (some items may be quarantined); 1 the cluster, the VLM, or a remote catalog or
    STAC API stayed unreachable (re-run to resume); 2 bad flags or input (e.g. a --state-dir that cannot
    be written, a path that does not exist, a URL that is not STAC); 3 the cluster refused
    documents (see the dead letters); 4 nothing could be indexed and items were quarantined.
    """


@ingest.command("images")
@click.argument("path")
@ingest_options
@captioner_options
@raster_options
@asset_options
@user_errors
def ingest_images(path: str, collection: str | None, captioner: str | None, model: str | None,
                  vlm_url: str | None, vlm_concurrency: int, device: str, dtype: str, **kwargs: Any) -> None:
    """PATH: a folder of JPEG/PNG/(Geo)TIFF images, or a STAC catalog / collection / ItemCollection,
    local or published (an http(s):// or s3:// URL of its JSON file; a STAC API is `ingest stac-api`)."""
    from rsrt.ingest.sources import open_source

    run = _image_run(kwargs, captioner=captioner, model=model, vlm_url=vlm_url, vlm_concurrency=vlm_concurrency,
                     device=device, dtype=dtype)
    source = open_source(path, collection=collection, raster=run.raster, assets=run.config.assets)
    _finish(_ingest(source, run.config, run.settings, run.as_json, run.captioner()), run.as_json)


@ingest.command("captions")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@ingest_options
@click.option("--min-variants", type=click.IntRange(1, 50), default=None,
              help="the fewest variants an image may have [default: 1 for plain captions; exactly 5 for RSRT "
                   "structured variants, which then accept from this many up to 5]")
@user_errors
def ingest_captions(path: Path, collection: str | None, min_variants: int | None, **kwargs: Any) -> None:
    """PATH: captions as JSONL: RSRT structured variants (grouped, or one variant per line), or plain
    captions ({"image", "caption"} per line, {"image", "captions": [...]}, or caption-only "variants")."""
    from rsrt.ingest.sources import open_source

    config, settings, as_json = _config(kwargs)
    source = open_source(path, kind="captions", collection=collection, min_variants=min_variants)
    _finish(_ingest(source, config, settings, as_json), as_json)


@ingest.command("benchmark")
@click.argument("name", type=click.Choice(["rsitmd", "ucm", "sydney"]))
@click.option("--split", default="test", show_default=True)
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None, help="benchmark folder [env RSRT_DATA_DIR]")
@ingest_options
@user_errors
def ingest_benchmark(name: str, split: str, data_dir: str | None, collection: str | None, **kwargs: Any) -> None:
    """A benchmark split's human captions (each caption one variant, caption text only)."""
    from rsrt.ingest.sources.caption_lists import CaptionListSource

    config, settings, as_json = _config(kwargs)
    t0 = time.perf_counter()
    source = CaptionListSource.load(name, split, data_dir, collection=collection)
    summary = _ingest(source, config, settings, as_json)
    summary["load_seconds"] = round(time.perf_counter() - t0 - summary["wall_seconds"], 3)
    _finish(summary, as_json)


def _json_option(flag: str, text: str | None) -> Any:
    """A flag whose value is JSON (`--query`): one line naming the flag when it is not."""
    from rsrt.search.errors import ConfigError

    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ConfigError(f"{flag}: not valid JSON") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: expected a JSON object, got {type(value).__name__}")
    return value


@ingest.command("stac-api")
@click.argument("api_url", metavar="URL")  # not `url`: that is --url, the OpenSearch cluster
@click.option("--collections", default=None, help="comma-separated ids of the collections to search (each must "
                                                   "exist) [default: all]")
@click.option("--bbox", default=None, help="west,south,east,north (WGS84): items whose footprint intersects it")
@click.option("--intersects", default=None, help="GeoJSON geometry (inline JSON or @file.geojson)")
@click.option("--datetime", "datetime_", default=None,
              help="an instant or start/end ('..' for an open end); 2021 or 2021-06 mean the whole year or month")
@click.option("--query", default=None, help='query extension, JSON: \'{"eo:cloud_cover": {"lt": 10}}\'')
@click.option("--filter", "filter_", default=None,
              help="CQL2 filter: text ('eo:cloud_cover < 10') or CQL2-JSON (starting with '{')")
@click.option("--max-items", type=int, default=None, help="read at most this many items [default: all]")
@click.option("--page-size", type=int, default=100, show_default=True, help="items per request to the API")
@click.option("--asset-key", "asset_keys", multiple=True,
              help="asset to caption, in order of preference (repeatable) [default: visual, then thumbnail, "
                   "then the first image asset]")
@click.option("--api-timeout", type=float, default=30.0, show_default=True,
              help="seconds per request to the STAC API")
@click.option("--api-retries", type=int, default=4, show_default=True,
              help="extra attempts per STAC API request on 429/5xx and failed connections (back-off doubling "
                   "from 0.5 s, Retry-After honoured); a page still failing stops the run (exit 1, resumable)")
@ingest_options
@captioner_options
@raster_options
@asset_options
@user_errors
def ingest_stac_api(api_url: str, collections: str | None, bbox: str | None, intersects: str | None,
                    datetime_: str | None, query: str | None, filter_: str | None, max_items: int | None,
                    page_size: int, asset_keys: tuple[str, ...], api_timeout: float, api_retries: int,
                    collection: str | None, captioner: str | None, model: str | None, vlm_url: str | None,
                    vlm_concurrency: int, device: str, dtype: str, **kwargs: Any) -> None:
    """URL: a STAC API's landing page (item search); its matching items are read page by page, resumably."""
    from rsrt.cli_search import _geometry
    from rsrt.ingest.sources import PREFERRED_ASSETS, StacApiSource

    run = _image_run(kwargs, captioner=captioner, model=model, vlm_url=vlm_url, vlm_concurrency=vlm_concurrency,
                     device=device, dtype=dtype)
    cql2 = _json_option("--filter", filter_) if filter_ and filter_.lstrip().startswith("{") else filter_
    source = StacApiSource(
        api_url, collections=tuple(collections.split(",")) if collections is not None else None, bbox=bbox,
        datetime=datetime_, intersects=_geometry(intersects), query=_json_option("--query", query), filter=cql2,
        page_size=page_size, max_items=max_items, collection=collection,
        asset_keys=tuple(asset_keys) or PREFERRED_ASSETS, raster=run.raster, assets=run.config.assets,
        timeout=api_timeout, retries=api_retries)
    _finish(_ingest(source, run.config, run.settings, run.as_json, run.captioner()), run.as_json)
