"""`rsrt bench capacity`: the capacity page (docs/performance/capacity.md) from measured per-image costs."""

from __future__ import annotations

from pathlib import Path

import click

from rsrt._cli_common import user_errors


def _counts(value: str) -> tuple[int, ...]:
    """1M,10M,100M (k and M suffixes, underscores allowed)."""
    out = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        scale = {"k": 1_000, "m": 1_000_000}.get(part[-1].lower(), 1)
        digits = part[:-1] if scale > 1 else part
        try:
            number = float(digits.replace("_", "")) * scale
        except ValueError:
            raise click.BadParameter(f"{value!r}: expected counts such as 1M,10M,100M", param_hint="--images") \
                from None
        if number <= 0 or number != int(number):
            raise click.BadParameter(f"{part!r}: expected a positive whole count", param_hint="--images")
        out.append(int(number))
    if not out:
        raise click.BadParameter(f"{value!r}: expected counts such as 1M,10M,100M", param_hint="--images")
    return tuple(out)


def _rates(value: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected numbers such as 0.5,1,2,5",
                                 param_hint="--vlm-images-per-second") from None
    if not rates or any(r <= 0 for r in rates):
        raise click.BadParameter(f"{value!r}: expected positive numbers", param_hint="--vlm-images-per-second")
    return rates


@click.command("capacity")
@click.option("--measured", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the measured per-image costs (format: docs/performance/capacity-inputs.example.json)")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="the Markdown page to write, e.g. docs/performance/capacity.md")
@click.option("--images", default="1M,10M,100M", show_default=True, help="archive sizes to size for")
@click.option("--replicas", type=click.IntRange(0, 10), default=1, show_default=True)
@click.option("--node-ram-gb", type=click.FloatRange(min=1), default=64.0, show_default=True,
              help="RAM per data node, GiB (heap: min(50 %, 31 GiB))")
@click.option("--shard-gb", type=click.FloatRange(min=0.1), default=None,
              help="max primary shard size, GB [default: the input's recommended_shard_gb]")
@click.option("--vlm-images-per-second", "vlm_rates", default="0.5,1,2,5", show_default=True,
              help="VLM answers per second per GPU (= images/s at one call per image)")
@click.option("--disk-per-node-tb", type=click.FloatRange(min=0.01), default=2.0, show_default=True)
@click.option("--page-cache-share", type=click.FloatRange(0.01, 1.0), default=0.8, show_default=True,
              help="share of the RAM outside the heap that vectors may use (an assumption)")
@click.option("--replicas-idle", is_flag=True, help="replicas serve no queries: only primaries must be hot")
@click.option("--gpus", type=click.IntRange(min=1), default=8, show_default=True, help="ingest fleet: VLM GPUs")
@click.option("--encoder-cores", type=click.IntRange(min=1), default=64, show_default=True,
              help="ingest fleet: encoder CPU cores")
@click.option("--node-cores", type=click.IntRange(min=1), default=8, show_default=True,
              help="ingest fleet: cores per data node")
@user_errors
def bench_capacity(measured: Path, out: Path, images: str, replicas: int, node_ram_gb: float,
                   shard_gb: float | None, vlm_rates: str, disk_per_node_tb: float, page_cache_share: float,
                   replicas_idle: bool, gpus: int, encoder_cores: int, node_cores: int) -> None:
    """Memory, disk, nodes, shards and ingest cost for 1M-100M images (fp32 and sq), as a Markdown page."""
    from rsrt.search.benchmarking.capacity import (
        CapacityPlan,
        ClusterAssumptions,
        Fleet,
        capacity,
        load_measured,
    )
    from rsrt.search.benchmarking.capacity_page import render_markdown

    cluster = ClusterAssumptions(replicas=replicas, node_ram_gib=node_ram_gb, shard_gb=shard_gb,
                                 disk_per_node_tb=disk_per_node_tb, page_cache_share=page_cache_share,
                                 replicas_serve_queries=not replicas_idle)
    plan = CapacityPlan(measured=load_measured(measured), cluster=cluster,
                        fleet=Fleet(gpus=gpus, encoder_cores=encoder_cores, node_cores=node_cores),
                        images=_counts(images), vlm_rates=_rates(vlm_rates))
    page = render_markdown(capacity(plan), measured_name=str(measured), out_name=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page + "\n")
    click.echo(str(out))
