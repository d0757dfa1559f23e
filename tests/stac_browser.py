"""STAC Browser 4.0.1 for browser tests: built once from its npm source, served on loopback, driven by Chromium.

* `built_stac_browser()` fetches `@radiantearth/stac-browser` with npm, installs its dev dependencies
  and runs its own `build:minimal` script; the `dist/` is cached under
  `/var/cache/rsrt/stac-browser/<version>-<hash of the recipe>/`, so later runs (and other pytest
  processes, behind a file lock) reuse it. One build serves any catalog URL: the build turns on
  STAC Browser's runtime `config.js` (a `<script>` its `public/index.html` ships commented out), and
  `PortalServer` answers `/config.js` from memory with each test's options.
* `PortalServer`: Python's http.server in a thread; unknown paths get `index.html` (STAC Browser's
  default history-mode routing reloads `/search` etc. from the server).
* `chromium()`: headless Debian Chromium through Selenium and the system chromedriver. The driver's
  path is given, so Selenium Manager never runs (it would download a driver); every host but
  127.0.0.1 resolves to nothing, so the page cannot reach the network (the OSM basemap stays blank).

Every failure (npm, the build, Chromium) raises `PortalSetupError` with the tail of the log: the
test fails, never skips.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PACKAGE = "@radiantearth/stac-browser"
VERSION = "4.0.1"
CACHE_ROOT = Path(os.environ.get("RSRT_STAC_BROWSER_CACHE", "/var/cache/rsrt/stac-browser"))
# 4.0.1 ships no lockfile. Its `ol-stac: ^1.1.0` now resolves to 1.6.0, which imports OpenLayers
# APIs (fromProjectionDefinition, parseTileMatrixSet) newer than the `ol: ~10.6.0` 4.0.1 pins, and
# the build fails. 1.4.0 was the newest ol-stac when 4.0.1 was published (npm: 2026-06-30).
DEPENDENCY_PINS = {"ol-stac": "1.4.0"}
BUILD_SCRIPT = "build:minimal"  # STAC Browser's own script: `vue-cli-service build --noSourceMaps`
RUNTIME_CONFIG_OFF = '<!-- <script defer="defer" src="/config.js"></script> -->'
RUNTIME_CONFIG_ON = '<script defer="defer" src="/config.js"></script>'
NPM = shutil.which("npm") or "/usr/bin/npm"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STEP_TIMEOUT = 1800  # seconds per npm step: 2 shared cores, a cold npm cache


class PortalSetupError(RuntimeError):
    """STAC Browser could not be built or served, or Chromium could not start."""


def _node_version() -> str:
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except OSError as exc:
        raise PortalSetupError(f"node is not installed (npm's STAC Browser build needs it): {exc}") from exc


def build_recipe() -> dict[str, Any]:
    """Everything the built `dist/` depends on: change one, and the cache key changes."""
    return {"package": PACKAGE, "version": VERSION, "pins": DEPENDENCY_PINS, "script": BUILD_SCRIPT,
            "index_html": [RUNTIME_CONFIG_OFF, RUNTIME_CONFIG_ON], "node": _node_version()}


def cache_dir() -> Path:
    digest = hashlib.sha256(json.dumps(build_recipe(), sort_keys=True).encode()).hexdigest()[:12]
    return CACHE_ROOT / f"{VERSION}-{digest}"


def _run(args: list[str], cwd: Path, log: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SB_")}  # SB_* would change the build
    env.update({"CI": "true", "NO_UPDATE_NOTIFIER": "1", "npm_config_fund": "false", "npm_config_audit": "false"})
    with log.open("a") as out:
        out.write(f"$ {' '.join(args)}\n")
        out.flush()
        try:
            done = subprocess.run(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=STEP_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PortalSetupError(f"{' '.join(args)} failed: {exc}") from exc
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise PortalSetupError(f"{' '.join(args)} exited {done.returncode} (log {log}):\n{tail}")


def _build(into: Path, log: Path) -> dict[str, Any]:
    """npm pack → unpack → pin → turn on runtime config → npm install (with dev deps) → npm run build."""
    work = into / "src"
    work.mkdir(parents=True)
    _run([NPM, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(into)], into, log)
    tarball = next(into.glob("*.tgz"))
    with tarfile.open(tarball) as archive:
        archive.extractall(work, filter="data")
    source = work / "package"
    manifest = json.loads((source / "package.json").read_text())
    if manifest.get("version") != VERSION:
        raise PortalSetupError(f"npm gave {PACKAGE} {manifest.get('version')}, not {VERSION}")
    manifest["dependencies"].update(DEPENDENCY_PINS)
    (source / "package.json").write_text(json.dumps(manifest, indent=2))
    index_html = source / "public" / "index.html"
    html = index_html.read_text()
    if RUNTIME_CONFIG_OFF not in html:
        raise PortalSetupError(f"{index_html} no longer has the commented-out config.js script: update the recipe")
    index_html.write_text(html.replace(RUNTIME_CONFIG_OFF, RUNTIME_CONFIG_ON))
    started = time.monotonic()
    _run([NPM, "install", "--include=dev", "--no-audit", "--no-fund", "--loglevel=error"], source, log)
    installed = time.monotonic() - started
    _run([NPM, "run", BUILD_SCRIPT], source, log)
    built = time.monotonic() - started - installed
    dist = source / "dist"
    if not (dist / "index.html").is_file() or RUNTIME_CONFIG_ON not in (dist / "index.html").read_text():
        raise PortalSetupError(f"the build made no dist/index.html loading /config.js (log {log})")
    resolved = json.loads(subprocess.run([NPM, "ls", "ol", "ol-stac", "--json"], cwd=source, capture_output=True,
                                         text=True, timeout=120).stdout or "{}")
    shutil.move(str(dist), into / "dist")
    shutil.rmtree(work)
    tarball.unlink()
    return {"recipe": build_recipe(), "npm_install_s": round(installed, 1), "build_s": round(built, 1),
            "resolved": resolved.get("dependencies", {})}


def built_stac_browser(log: Any = print) -> Path:
    """The `dist/` of STAC Browser, built now if no earlier run cached it (one builder at a time)."""
    target = cache_dir()
    if (target / "build.json").is_file():
        return target / "dist"
    try:
        CACHE_ROOT.mkdir(parents=True, exist_ok=True)
        lock = (CACHE_ROOT / f".{target.name}.lock").open("w")
    except OSError as exc:
        raise PortalSetupError(f"cannot write the STAC Browser cache {CACHE_ROOT}: {exc} "
                               "(set RSRT_STAC_BROWSER_CACHE to a writable folder)") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "build.json").is_file():  # another process built it while we waited
            return target / "dist"
        staging = CACHE_ROOT / f".{target.name}.building-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        log_file = CACHE_ROOT / f"{target.name}.build.log"
        log_file.write_text("")
        log(f"building {PACKAGE} {VERSION} into {target} (log {log_file}); later runs reuse it")
        started = time.monotonic()
        try:
            record = _build(staging, log_file)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        record["total_s"] = round(time.monotonic() - started, 1)
        (staging / "build.json").write_text(json.dumps(record, indent=2))
        shutil.rmtree(target, ignore_errors=True)  # a half-made folder without build.json
        staging.rename(target)
        log(f"STAC Browser built in {record['total_s']} s (npm install {record['npm_install_s']} s, "
            f"build {record['build_s']} s)")
    return target / "dist"


class PortalServer:
    """`dist/` on a loopback port: `/config.js` is this server's STAC Browser options; any path that is no
    file gets `index.html` (history-mode routes)."""

    def __init__(self, dist: Path, config: dict[str, Any]) -> None:
        self.dist = dist.resolve()
        self.configure(config)
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def configure(self, config: dict[str, Any]) -> None:
        """STAC Browser's options, read by the next page load (e.g. the catalog URL once the API runs)."""
        self.config_js = f"window.STAC_BROWSER_CONFIG = {json.dumps(config)};\n".encode()

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> PortalServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[SimpleHTTPRequestHandler]:
        portal = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(portal.dist), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                portal.requests.append(path)
                if path == "/config.js":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/javascript")
                    self.send_header("Content-Length", str(len(portal.config_js)))
                    self.send_header("Cache-Control", "no-store")
                    self.end_headers()
                    self.wfile.write(portal.config_js)
                    return
                candidate = (portal.dist / path.lstrip("/")).resolve()
                if path != "/" and (not candidate.is_file() or portal.dist not in candidate.parents):
                    self.path = "/index.html"  # a history-mode route, e.g. /search
                super().do_GET()

        return Handler


@contextlib.contextmanager
def chromium(window: tuple[int, int] = (1400, 1000)) -> Iterator[Any]:
    """Headless Debian Chromium under the Debian chromedriver (never a downloaded one)."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    for binary in (CHROMIUM, CHROMEDRIVER):
        if not Path(binary).is_file():
            raise PortalSetupError(f"{binary} is missing: apt-get install -y chromium chromium-driver "
                                   "(the Makefile's test prerequisite does it)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={window[0]},{window[1]}", "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update",
                     "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):  # loopback only
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    try:
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    except WebDriverException as exc:
        raise PortalSetupError(f"headless Chromium did not start: {exc.msg}") from exc
    try:
        yield driver
    finally:
        driver.quit()
