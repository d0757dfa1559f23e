"""`rsrt demo`: the main job end to end on the embedded default (the local node)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from rsrt._cli_common import user_errors

EXAMPLE_QUERY = "two ships moored at a gray port"


@click.command("demo")
@click.option("--data-dir", envvar="RSRT_DATA_DIR", default=None, help="benchmark folder [env RSRT_DATA_DIR]")
@click.option("--index", "index_name", default="rsitmd-test", show_default=True)
@click.option("--http-port", default=9200, show_default=True, help="the local node's HTTP port")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("reports/rsitmd-loo"),
              show_default=True)
@click.option("--modes", default="lexical,dense,hybrid", show_default=True,
              help="evaluation modes (add hybrid-rrf for the second fusion)")
@user_errors
def demo(data_dir: str | None, index_name: str, http_port: int, out: Path, modes: str) -> None:
    """Start the local node, ingest the RSITMD test split, query each mode, run the loo evaluation."""
    from rsrt.cli_ingest import print_summary, progress_bar
    from rsrt.ingest.run import IngestConfig, run_ingest
    from rsrt.ingest.sources.caption_lists import CaptionListSource
    from rsrt.search.client import connect
    from rsrt.search.config import ConnectionSettings
    from rsrt.search.evaluation.run import EvaluationConfig, run_evaluation
    from rsrt.search.node import LocalCluster, NodeSettings
    from rsrt.search.request import Mode, SearchRequest
    from rsrt.search.searcher import Searcher

    conditions = [m.strip() for m in modes.split(",") if m.strip()]
    evaluation = EvaluationConfig(benchmark="rsitmd", protocol="loo", conditions=conditions, data_dir=data_dir,
                                  out=out)  # checked before minutes of work, not after

    click.secho("1/4 local OpenSearch node", bold=True)
    cluster = LocalCluster(NodeSettings(http_port=http_port, transport_port=http_port + 100),
                           log=lambda message: click.echo(f"  {message}"))
    state = cluster.start()
    settings = ConnectionSettings.resolve(url=state.url, env={})
    client = connect(settings)

    click.secho(f"\n2/4 ingest the RSITMD test split into {index_name!r}", bold=True)
    source = CaptionListSource.load("rsitmd", "test", data_dir)
    with progress_bar(source.count_hint()) as progress:
        summary = run_ingest(source, IngestConfig(index=index_name), settings, progress=progress)
    print_summary(summary.as_dict(), as_json=False)

    click.secho(f"\n3/4 one query in each mode: {EXAMPLE_QUERY!r}", bold=True)
    searcher = Searcher(client, index_name)
    for mode in (Mode.LEXICAL, Mode.DENSE, Mode.HYBRID):
        results = searcher.search(SearchRequest(EXAMPLE_QUERY, mode, 3))
        site = f" ({results.fusion_site}-side fusion)" if results.fusion_site else ""
        click.echo(f"  {mode}{site}:")
        for hit in results.hits:
            click.echo(f"    {hit.rank}. {hit.image_id:<18} {hit.score:8.4f}  {hit.best_caption()[:80]}")

    _curl_hybrid(searcher, state.url, index_name)

    click.secho("\n4/4 leave-one-out evaluation (RSITMD test, 5 folds)", bold=True)
    run_evaluation(evaluation, client, echo=lambda message: click.echo(f"  {message}" if message else ""))
    click.echo(f"\nthe node keeps running at {state.url} (`rsrt node stop` stops it); try:\n"
               f"  rsrt search \"storage tanks near the sea\" --index {index_name}")


def _curl_hybrid(searcher: Any, url: str, index_name: str) -> None:
    """The same query as a plain-text hybrid request any client can post: the cluster embeds the text."""
    import json
    import urllib.error
    import urllib.request
    from urllib.parse import urlencode

    from rsrt.search.errors import RsrtError
    from rsrt.search.ml import ensure_deployed, index_cluster_model
    from rsrt.search.request import EmbedSite, FusionSite, Mode, SearchRequest

    request = SearchRequest(EXAMPLE_QUERY, Mode.HYBRID, 3, fusion_site=FusionSite.SERVER, embed=EmbedSite.CLUSTER)
    try:
        body, params = searcher.build_request(request)
        model = index_cluster_model(searcher.client, index_name)
        if model is not None:  # a restarted node has the model undeployed: a raw request would get HTTP 400
            ensure_deployed(searcher.client, model, index=index_name)
    except RsrtError as exc:
        click.echo(f"  (no plain-text request: {exc})")
        return
    target = f"{url}/{index_name}/_search" + (f"?{urlencode(params)}" if params else "")
    payload = json.dumps(body)
    click.echo("  the same hybrid query as one plain-text request (the cluster embeds the text; no vector in it):")
    click.echo(f"    curl -s -H 'Content-Type: application/json' '{target}' -d '{payload}'")
    http = urllib.request.Request(target, data=payload.encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(http, timeout=60) as answer:
            hits = json.load(answer)["hits"]["hits"]
    except (OSError, ValueError, KeyError) as exc:  # urllib's HTTPError is an OSError: one line, the demo goes on
        detail = exc.read().decode("utf-8", "replace")[:300] if isinstance(exc, urllib.error.HTTPError) else ""
        click.echo(f"  (the cluster did not answer the plain-text request: {exc} {detail})".rstrip())
        return
    click.echo("  its answer: " + ", ".join(f"{hit['_id']} {hit['_score']:.4f}" for hit in hits))
