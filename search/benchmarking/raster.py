"""Raster → VLM picture speed and memory (`rsrt bench raster`): read + stretch + resize per chip.

A synthetic 4-band uint16 scene (default 4,000 × 4,000, tiled 512, deflate, internal overviews
2–16, like a COG) is written in a child process, so the parent's peak RSS (`ru_maxrss`, which
only grows) shows what rendering costs, not what writing the file cost. Phases run from the
cheapest to the dearest so each phase's peak is its own:

1. chips: every `chip_size` window of the scene rendered at `max_side` (the ingest loader's
   path: open, decimated read of the window, percentile stretch, RGB image);
2. scene: the whole scene rendered at `max_side` from the COG (through its overviews) and from
   the same file without overviews (GDAL then reads every full-resolution tile);
3. full: the whole scene read at full resolution, for comparison (what a naive loader does).

Chips also report CPU time per chip (`time.process_time`, all threads of this process): on a
shared machine it moves much less than wall time.

With `http` (the default), the same chips and the whole scene are also rendered from the COG over
HTTP (range reads through GDAL's `/vsicurl/`, `rsrt.ingest.assets.open_raster`), right after the
local chips so that the peak RSS is comparable: from a loopback range-serving server the benchmark
starts in a child process (its memory is not the renderer's; it counts the bytes and requests it
serves), or from `url`, a real remote COG. Every loopback pass uses a fresh URL (a query string
the server ignores), so each pass is cold: GDAL's cache of fetched ranges does not carry over.
"""

from __future__ import annotations

import multiprocessing
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rsrt.ingest.assets import AssetOptions, open_raster
from rsrt.ingest.raster import RasterRead, chip_windows, render


@dataclass(frozen=True)
class RasterBenchPlan:
    size: int = 4000  # scene width and height, pixels
    bands: int = 4
    chip_size: int = 512
    max_side: int = 1024
    repeats: int = 3  # passes over the chips (the best and the median are reported)
    full_read: bool = True  # also read the scene at full resolution (phase 3)
    http: bool = True  # also render the chips and the scene over HTTP range reads
    url: str | None = None  # a real remote COG for the HTTP phase instead of the loopback server


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def write_scene(path: Path, size: int, bands: int, overviews: bool) -> None:
    """A reflectance-like uint16 scene, written strip by strip (flat memory), with overviews when asked."""
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    profile = {"driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint16",
               "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "nodata": 0,
               "crs": "EPSG:32633", "transform": Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)}
    rng = np.random.default_rng(0)
    levels = np.linspace(500, 3000, bands, dtype=np.float32).reshape(-1, 1, 1)
    x = np.linspace(0, 6 * np.pi, size, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as ds:
        for row in range(0, size, 512):
            rows = min(512, size - row)
            y = np.linspace(row, row + rows, rows, dtype=np.float32).reshape(-1, 1) * (6 * np.pi / size)
            pattern = 800 * np.sin(x)[None, :] * np.cos(y)  # fields-like structure, compressible like a scene
            noise = rng.normal(0, 150, (bands, rows, size)).astype(np.float32)
            ds.write((levels + pattern + noise).clip(1, 65535).astype(np.uint16), window=Window(0, row, size, rows))
        if overviews:
            ds.build_overviews([2, 4, 8, 16], Resampling.average)
            ds.update_tags(ns="rio_overview", resampling="average")


def _write_scenes(directory: str, size: int, bands: int) -> None:
    write_scene(Path(directory) / "cog.tif", size, bands, overviews=True)
    write_scene(Path(directory) / "plain.tif", size, bands, overviews=False)


def _timed(func: Any) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def run_raster_benchmark(plan: RasterBenchPlan, workdir: Path | None = None) -> dict[str, Any]:
    """The figures as a dict (JSON-ready): chips/s, scene render seconds, peak RSS after each phase."""
    import rasterio

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        t0 = time.perf_counter()
        context = multiprocessing.get_context("spawn")
        child = context.Process(target=_write_scenes, args=(tmp, plan.size, plan.bands))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"writing the benchmark scenes failed (exit code {child.exitcode})")
        write_seconds = time.perf_counter() - t0
        cog, plain = Path(tmp) / "cog.tif", Path(tmp) / "plain.tif"
        baseline = peak_rss_mb()

        windows = chip_windows(plan.size, plan.size, plan.chip_size)

        def render_chips() -> None:
            for window in windows:  # one picture alive at a time, as in the caption stage's chunks
                render(cog, RasterRead(window=window, max_side=plan.max_side))

        passes, cpu_passes = [], []
        for _ in range(plan.repeats):
            cpu0 = time.process_time()
            passes.append(_timed(render_chips))
            cpu_passes.append(time.process_time() - cpu0)
        chips_rss = peak_rss_mb()
        http = _http_phase(plan, cog, len(windows)) if plan.http else {}

        scene_cog = min(_timed(lambda: render(cog, RasterRead(max_side=plan.max_side))) for _ in range(plan.repeats))
        scene_plain = min(_timed(lambda: render(plain, RasterRead(max_side=plan.max_side)))
                          for _ in range(plan.repeats))
        scene_rss = peak_rss_mb()

        full: dict[str, Any] = {}
        if plan.full_read:
            def read_full() -> None:
                with rasterio.open(cog) as ds:
                    ds.read()

            full = {"seconds": round(_timed(read_full), 3), "peak_rss_mb": peak_rss_mb()}
        sizes = {"cog_mb": round(cog.stat().st_size / 2**20, 1), "plain_mb": round(plain.stat().st_size / 2**20, 1)}

    best, median = min(passes), statistics.median(passes)
    return {
        "plan": asdict(plan),
        "files": {**sizes, "write_seconds": round(write_seconds, 1)},
        "baseline_rss_mb": baseline,
        "chips": {"count": len(windows), "chips_per_second_best": round(len(windows) / best, 1),
                  "chips_per_second_median": round(len(windows) / median, 1),
                  "ms_per_chip_median": round(1000 * median / len(windows), 1),
                  "cpu_ms_per_chip_median": round(1000 * statistics.median(cpu_passes) / len(windows), 1),
                  "peak_rss_mb": chips_rss},
        "scene": {"cog_overviews_seconds": round(scene_cog, 3), "no_overviews_seconds": round(scene_plain, 3),
                  "peak_rss_mb": scene_rss},
        "full_resolution_read": full,
        "http": http,
        "gdal": rasterio.__gdal_version__,
        "rasterio": rasterio.__version__,
    }


def format_raster_benchmark(result: dict[str, Any]) -> str:
    """The figures as the Markdown table docs/performance/raster/README.md shows."""
    plan, chips, scene, full = result["plan"], result["chips"], result["scene"], result["full_resolution_read"]
    lines = [
        f"scene {plan['size']}x{plan['size']}, {plan['bands']} bands uint16, tiled 512, deflate "
        f"({result['files']['cog_mb']} MB with overviews 2-16, {result['files']['plain_mb']} MB without); "
        f"GDAL {result['gdal']}, rasterio {result['rasterio']}",
        "",
        "| what | figure | peak RSS (MB) |",
        "|---|---|---|",
        f"| process before reading | | {result['baseline_rss_mb']} |",
        f"| {chips['count']} chips of {plan['chip_size']} px → ≤{plan['max_side']} px RGB (read + stretch + "
        f"image) | {chips['chips_per_second_median']} chips/s median ({chips['chips_per_second_best']} best), "
        f"{chips['ms_per_chip_median']} ms/chip wall, {chips['cpu_ms_per_chip_median']} ms CPU | "
        f"{chips['peak_rss_mb']} |",
        f"| whole scene → {plan['max_side']} px, COG (overviews) | {scene['cog_overviews_seconds']} s | "
        f"{scene['peak_rss_mb']} |",
        f"| whole scene → {plan['max_side']} px, no overviews | {scene['no_overviews_seconds']} s | |",
        *format_http(result),
    ]
    if full:
        lines.append(f"| whole scene at full resolution (`ds.read()`, for comparison) | {full['seconds']} s | "
                     f"{full['peak_rss_mb']} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- over HTTP


def _serve(directory: str, ready: Any, served: Any, requests: Any, stop: Any) -> None:
    """A loopback HTTP/1.1 server for `directory` with byte ranges (206), HEAD and 416; counts bytes."""
    import re
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import unquote, urlsplit

    pattern = re.compile(r"^bytes=(\d*)-(\d*)$")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            with requests.get_lock():
                requests.value += 1
            file = Path(directory) / unquote(urlsplit(self.path).path).lstrip("/")
            if not file.is_file():
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            size = file.stat().st_size
            start, end, status = 0, size - 1, 200
            match = pattern.match(self.headers.get("Range", "").strip())
            if match and (match.group(1) or match.group(2)):
                if match.group(1):
                    start = int(match.group(1))
                    end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
                else:
                    start = max(0, size - int(match.group(2)))
                if start >= size or start > end:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            self.send_response(status)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(end - start + 1))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            if body:
                with file.open("rb") as handle:
                    handle.seek(start)
                    data = handle.read(end - start + 1)
                self.wfile.write(data)
                with served.get_lock():
                    served.value += len(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    ready.put(server.server_address[1])
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait()
    server.shutdown()


def _http_phase(plan: RasterBenchPlan, cog: Path, local_chips: int) -> dict[str, Any]:
    """Chips/s and the whole scene over HTTP range reads; bytes and requests (loopback) or a real URL."""
    options = AssetOptions(timeout=60.0, retries=2)
    context = multiprocessing.get_context("spawn")
    server = None
    served = requests = None
    if plan.url is None:
        ready, stop = context.Queue(), context.Event()
        served, requests = context.Value("q", 0), context.Value("q", 0)
        server = context.Process(target=_serve, args=(str(cog.parent), ready, served, requests, stop), daemon=True)
        server.start()
        base = f"http://127.0.0.1:{ready.get(timeout=60)}/{cog.name}"
        file_mb: float | None = round(cog.stat().st_size / 2**20, 1)
    else:
        base, file_mb = plan.url, None
    try:
        with open_raster(base, options) as dataset:
            width, height = dataset.width, dataset.height
        windows = chip_windows(width, height, plan.chip_size)[:local_chips]

        def url(n: int) -> str:  # a fresh URL per pass on loopback: every pass cold
            return f"{base}?pass={n}" if plan.url is None else base

        def counters() -> tuple[int, int]:
            return (served.value, requests.value) if served is not None and requests is not None else (0, 0)

        passes, cpu_passes, traffic = [], [], []
        for n in range(plan.repeats):
            before = counters()
            cpu0 = time.process_time()
            passes.append(_timed(lambda n=n: [render(url(n), RasterRead(window=w, max_side=plan.max_side), options)
                                              for w in windows]))
            cpu_passes.append(time.process_time() - cpu0)
            after = counters()
            traffic.append((after[0] - before[0], after[1] - before[1]))
        chips_rss = peak_rss_mb()
        before = counters()
        scene = min(_timed(lambda n=n: render(url(100 + n), RasterRead(max_side=plan.max_side), options))
                    for n in range(plan.repeats))
        after = counters()
        scene_rss = peak_rss_mb()
    finally:
        if server is not None:
            stop.set()
            server.join(10)
    median = statistics.median(passes)
    out: dict[str, Any] = {
        "source": "loopback" if plan.url is None else plan.url,
        "chips": {"count": len(windows), "chips_per_second_best": round(len(windows) / min(passes), 1),
                  "chips_per_second_median": round(len(windows) / median, 1),
                  "ms_per_chip_median": round(1000 * median / len(windows), 1),
                  "cpu_ms_per_chip_median": round(1000 * statistics.median(cpu_passes) / len(windows), 1),
                  "peak_rss_mb": chips_rss},
        "scene": {"seconds": round(scene, 3), "peak_rss_mb": scene_rss},
    }
    if plan.url is None:
        mb_per_pass = statistics.median(t[0] for t in traffic) / 2**20
        out["file_mb"] = file_mb
        out["chips"].update({"downloaded_mb_per_pass": round(mb_per_pass, 1),
                             "requests_per_pass": int(statistics.median(t[1] for t in traffic))})
        out["scene"].update({"downloaded_mb": round((after[0] - before[0]) / plan.repeats / 2**20, 2),
                             "requests": round((after[1] - before[1]) / plan.repeats)})
    return out


def format_http(result: dict[str, Any]) -> list[str]:
    """The HTTP rows of the table (empty without the HTTP phase)."""
    http, plan = result.get("http") or {}, result["plan"]
    if not http:
        return []
    chips, scene = http["chips"], http["scene"]
    where = "loopback HTTP" if http["source"] == "loopback" else f"HTTP {http['source']}"
    traffic = (f"; {chips['downloaded_mb_per_pass']} MB in {chips['requests_per_pass']} range requests per pass "
               f"(file {http['file_mb']} MB)" if "downloaded_mb_per_pass" in chips else "")
    scene_traffic = (f"; {scene['downloaded_mb']} MB in {scene['requests']} requests"
                     if "downloaded_mb" in scene else "")
    return [
        f"| {chips['count']} chips over {where} (range reads, cold cache) → ≤{plan['max_side']} px RGB | "
        f"{chips['chips_per_second_median']} chips/s median ({chips['chips_per_second_best']} best), "
        f"{chips['ms_per_chip_median']} ms/chip wall, {chips['cpu_ms_per_chip_median']} ms CPU{traffic} | "
        f"{chips['peak_rss_mb']} |",
        f"| whole scene → {plan['max_side']} px over {where} (overviews) | {scene['seconds']} s{scene_traffic} | "
        f"{scene['peak_rss_mb']} |",
    ]
