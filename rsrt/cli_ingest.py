"""`rsrt ingest images | captions | benchmark`: read → caption → embed → write, resumable."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from rsrt._cli_common import connection_options, encoder_backend_option, settings_from, user_errors
from rsrt.cli_index import index_option
from rsrt.search.encoder import DEFAULT_BATCH_SIZE


def ingest_options(func):
    options = [
        index_option,
        connection_options,
        click.option("--encoder", default="all-MiniLM-L6-v2", show_default=True, help="sentence encoder"),
        encoder_backend_option,
        click.option("--batch-size", default=64, show_default=True, help="images per batch through the stages"),
        click.option("--encode-batch-size", default=DEFAULT_BATCH_SIZE, show_default=True,
                     help="texts per encoder forward pass"),
        click.option("--workers", default=2, show_default=True, help="concurrent bulk writers"),
        click.option("--collection", default=None, help="collection name for every record"),
        click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="checkpoint, caption cache, quarantine, dead letters [default .rsrt/<index>]"),
        click.option("--dry-run", is_flag=True, help="read, caption and embed, but write nothing"),
        click.option("--overwrite", is_flag=True, help="rewrite images that are already indexed"),
        click.option("--retry-quarantined", is_flag=True,
                     help="try again the items an earlier run quarantined (they are skipped otherwise)"),
        click.option("--max-retries", default=6, show_default=True,
                     help="attempts per bulk batch while the cluster is unreachable (exponential back-off)"),
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
    ]
    for option in reversed(options):
        func = option(func)
    return func


def make_captioner(captioner: str | None, model: str | None, vlm_url: str | None, vlm_concurrency: int,
                   device: str, dtype: str, batch_size: int):
    from rsrt.search.errors import ConfigError

    if captioner is None:
        return None
    from rsrt.ingest.captioners import make_captioner as factory

    if not model:
        raise ConfigError(f"--captioner {captioner} needs --model")
    if captioner == "openai":
        if not vlm_url:
            raise ConfigError("--captioner openai needs --vlm-url (or RSRT_VLM_URL)")
        return factory("openai", base_url=vlm_url, model=model, concurrency=vlm_concurrency)
    return factory("transformers", model_path=model, device=device, dtype=dtype,
                   batch_size=min(batch_size, 8))


def run_ingest(source: Any, options: dict[str, Any], captioner: Any | None = None) -> dict[str, Any]:
    """Shared by every ingest command (and the demo): connect, create the index, run the stages."""
    from tqdm import tqdm

    from rsrt.ingest.ledger import Ledger
    from rsrt.ingest.pipeline import IngestOptions, IngestPipeline
    from rsrt.search.client import require_cluster
    from rsrt.search.encoder import get_encoder
    from rsrt.search.errors import ConfigError
    from rsrt.search.index import create_index, index_uuid

    if source.needs_captioning and captioner is None:
        raise ConfigError(f"{source.describe()} holds images without captions: give --captioner and --model")
    index_name = options["index_name"]
    encoder = get_encoder(options["encoder"])
    client = None
    scope = None
    if not options["dry_run"]:
        client, _ = require_cluster(options["settings"])
        create_index(client, encoder.info(), index_name)
        scope = index_uuid(client, index_name)
    state_dir = options["state_dir"] or Path(".rsrt") / index_name
    ledger = Ledger(state_dir, scope=scope)
    bar = tqdm(total=source.count_hint(), unit="img", desc="ingest", disable=options["as_json"], leave=False)

    def progress(stats) -> None:
        bar.n = stats.ingested + stats.skipped + stats.quarantined + stats.failed
        bar.set_postfix_str(" ".join(f"{k}={v:.1f}s" for k, v in stats.stage_seconds.items()), refresh=False)
        bar.refresh()

    pipeline = IngestPipeline(
        client, encoder, ledger,
        IngestOptions(index=index_name, batch_size=options["batch_size"],
                      encode_batch_size=options["encode_batch_size"], workers=options["workers"],
                      dry_run=options["dry_run"], overwrite=options["overwrite"],
                      bulk_retries=max(1, options["max_retries"]),
                      retry_quarantined=options.get("retry_quarantined", False)),
        captioner=captioner, progress=progress,
    )
    try:
        stats = pipeline.run(source)
    finally:
        bar.close()
        ledger.close()
        if captioner is not None:
            captioner.close()
    summary = {"source": source.describe(), "index": index_name, **stats.as_dict(),
               "state_dir": str(state_dir)}
    if stats.quarantined:
        summary["quarantine"] = str(ledger.quarantine_path)
    if stats.failed:
        summary["dead_letters"] = str(ledger.dead_letter_path)
    return summary


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{summary['source']} -> {summary['index']}")
    click.echo(f"  ingested {summary['ingested']}, skipped {summary['skipped']} (already indexed), "
               f"quarantined {summary['quarantined']}, failed {summary['failed']}")
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in summary["stage_seconds"].items())
    click.echo(f"  {summary['wall_seconds']:.1f}s wall, {summary['docs_per_second']:.1f} docs/s; stages: {stages}")
    if "quarantine" in summary:
        click.echo(f"  quarantined items and reasons: {summary['quarantine']}")
    if "dead_letters" in summary:
        click.echo(f"  refused documents: {summary['dead_letters']}")


def _options(kwargs: dict[str, Any]) -> dict[str, Any]:
    options = {k: kwargs.pop(k) for k in ("index_name", "encoder", "batch_size", "encode_batch_size", "workers",
                                          "state_dir", "dry_run", "overwrite", "as_json", "max_retries",
                                          "retry_quarantined")}
    options["settings"] = settings_from(kwargs)
    return options


def _finish(summary: dict[str, Any], as_json: bool) -> None:
    print_summary(summary, as_json)
    if summary["failed"]:
        raise SystemExit(3)


@click.group()
def ingest() -> None:
    """Bulk-load images, STAC catalogs, caption files or benchmark splits into an index."""


@ingest.command("images")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@ingest_options
@captioner_options
@user_errors
def ingest_images(path: Path, collection: str | None, captioner: str | None, model: str | None,
                  vlm_url: str | None, vlm_concurrency: int, device: str, dtype: str, **kwargs: Any) -> None:
    """PATH: a folder of JPEG/PNG/(Geo)TIFF images, or a STAC catalog / collection / ItemCollection."""
    from rsrt.ingest.sources import open_source

    options = _options(kwargs)
    source = open_source(path, collection=collection)
    vlm = make_captioner(captioner, model, vlm_url, vlm_concurrency, device, dtype, options["batch_size"])
    _finish(run_ingest(source, options, vlm), options["as_json"])


@ingest.command("captions")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@ingest_options
@user_errors
def ingest_captions(path: Path, collection: str | None, **kwargs: Any) -> None:
    """PATH: precomputed captions as JSONL (RSRT grouped form or one variant per line)."""
    from rsrt.ingest.sources import open_source

    options = _options(kwargs)
    source = open_source(path, kind="captions", collection=collection)
    _finish(run_ingest(source, options), options["as_json"])


@ingest.command("benchmark")
@click.argument("name", type=click.Choice(["rsitmd", "ucm", "sydney"]))
@click.option("--split", default="test", show_default=True)
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None, help="benchmark folder [env RSRT_DATA_DIR]")
@ingest_options
@user_errors
def ingest_benchmark(name: str, split: str, data_dir: str | None, collection: str | None, **kwargs: Any) -> None:
    """A benchmark split's human captions (each caption one variant, caption text only)."""
    from rsrt.ingest.sources.caption_lists import CaptionListSource

    options = _options(kwargs)
    t0 = time.perf_counter()
    source = CaptionListSource.load(name, split, data_dir, collection=collection)
    summary = run_ingest(source, options)
    summary["load_seconds"] = round(time.perf_counter() - t0 - summary["wall_seconds"], 3)
    _finish(summary, options["as_json"])
