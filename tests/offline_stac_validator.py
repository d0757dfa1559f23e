"""The official `stac-api-validator` (0.6.8), run offline against a loopback STAC API.

Why this exists: the validator and the libraries under it (stac-validator / stac-valid, stac-check, pystac,
jsonschema's `referencing`) download JSON schemas while they work, and the tests may not touch the network.
A schema that cannot be fetched must never pass silently, so every read that would leave the machine is
either answered from a copy *shipped by an installed package* or refused and recorded; any refusal makes
the harness fail (`ValidatorCouldNotRun`), whatever the validator printed.

How: `run_validator` starts this file as a subprocess (`python offline_stac_validator.py RUN_DIR -- ARGS…`). In that
process `_go_offline` patches, before the validator is imported, the four ways its libraries open URLs:
`requests` (`HTTPAdapter.send`: stac-validator's schema reads, stac-check, the validator's own requests),
`urllib3.PoolManager.urlopen` (pystac's `StacIO`), `urllib.request.OpenerDirector.open` (stac-validator's
link and asset checks) and, as the backstop for anything else, `socket.getaddrinfo`: a known schema URL is
answered from `local_schemas()`, a loopback host goes through, anything else is refused and written to
`RUN_DIR/offline.jsonl`. Then the validator's own click entry point (`stac_api_validator.__main__.main`)
runs with ARGS; its `validate_api` is wrapped (it still runs as is) to write the structured warnings and
errors to `RUN_DIR/result.json`, because the CLI's text output is ambiguous (multi-line messages) and its
exit status is 0 even when it crashed ("Failed." path: click ignores the command's `return 1`).

Where the local schemas come from (nothing is committed here, nothing is downloaded):
- STAC 1.1.0 item, catalog, collection and the item-spec fragments, and geojson.org's Feature and Geometry:
  pystac's package data (`pystac.validation.local_validator.get_local_schema_cache`);
- the JSON Schema meta-schemas (draft-03 … 2020-12): `jsonschema_specifications.REGISTRY`.
No installed package ships the STAC 1.0.0 schemas or any stac-extensions schema (stac-valid 4.2.2 looks for
a `local_schemas/` folder that its wheel does not contain), so an API answering STAC 1.0.0 or naming an
extension fails the harness naming the schema URL.

"Could not run" (`ValidatorCouldNotRun`, no verdict) versus "found errors" (`ValidatorReport.errors`): a
refused read, a crash (no result file; the errors found until then are shown), a CRITICAL log line (it gave
up, e.g. a class needing `--collection`), an exit status that contradicts the errors, or a timeout is the
first; the validator's errors are the second, plus two the harness adds because the validator skips
silently: `--conformance filter` whose checks did not run (the landing page does not advertise
item-search#filter) and `item-search#sort` asked for but not advertised (validate_sort never looks).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urlsplit

VALIDATOR_VERSION = "0.6.8"  # its defects, worked around and named by line, are this version's
RESULT_FILE = "result.json"
OFFLINE_LOG = "offline.jsonl"
ERRORS_SO_FAR = "errors-so-far.jsonl"  # every error as the validator adds it: what it had found before a crash
# The validator logs at CRITICAL (logger.fatal) when it gives up before validating anything, then returns
# no errors: such a run validated nothing.
GAVE_UP_MARK = "CRITICAL:"
# `--conformance filter` only runs the filter checks when the landing page advertises item-search#filter;
# otherwise it silently skips them (validations.py, validate_item_search). This line proves they ran.
FILTER_RAN_MARK = "Validating STAC API - Item Search - Filter Extension conformance class."
# Classes the validator checks when asked without looking whether the API claims them (validate_sort reads no
# `conformsTo`): the harness checks the claim. Any STAC API version matches (`.../v1.0.0/item-search#sort`).
CLAIM_SUFFIXES = {"item-search#sort": "/item-search#sort"}
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class ValidatorCouldNotRun(RuntimeError):
    """The validator did not finish a validation (crash, gave up, needed the network): no verdict on the API."""


@dataclass(frozen=True)
class ValidatorReport:
    """One finished validation: what the validator (and the harness's own checks) found."""

    errors: list[str]
    warnings: list[str]
    schemas_served: list[str]  # local copies the run read: proof that schema validation really happened
    output: str


def local_schemas() -> dict[str, bytes]:
    """Schema URL (without fragment) → its bytes, from packages installed here (see the module docstring)."""
    import jsonschema_specifications
    from pystac.validation.local_validator import get_local_schema_cache

    schemas: dict[str, bytes] = {}
    for uri in jsonschema_specifications.REGISTRY:
        contents = jsonschema_specifications.REGISTRY.contents(uri)
        schemas[_key(uri)] = json.dumps(contents).encode()
    for uri, contents in get_local_schema_cache().items():
        schemas[_key(uri)] = json.dumps(contents).encode()
    return schemas


def _key(url: str) -> str:
    return urldefrag(url).url


def is_loopback(host: str | None) -> bool:
    """Only the machine itself: the API under test lives there."""
    if host is None:
        return True
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_validator(root_url: str, *, conformance: list[str], collection: str, geometry: dict[str, Any] | None = None,
                  extra_args: tuple[str, ...] = (), timeout: float = 1200) -> ValidatorReport:
    """Validate the STAC API at `root_url` with the official validator, offline.

    Returns the validator's findings; raises `ValidatorCouldNotRun` when there is no verdict to trust.
    """
    if not is_loopback(urlsplit(root_url).hostname):
        raise ValueError(f"{root_url}: the offline validator only checks an API on loopback")
    _check_validator_version()
    args = ["--root-url", root_url, "--collection", collection, "--log-level", "INFO"]
    for name in conformance:
        args += ["--conformance", name]
    if geometry is not None:
        args += ["--geometry", json.dumps(geometry)]
    args += list(extra_args)
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"http_proxy", "https_proxy", "all_proxy"}}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    with tempfile.TemporaryDirectory(prefix="rsrt-stac-validator-") as run_dir:
        try:
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), run_dir, "--", *args],
                                  capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            raise ValidatorCouldNotRun(f"the validator did not finish within {timeout:.0f} s") from exc
        output = done.stdout + done.stderr
        refused, served = _read_offline_log(Path(run_dir) / OFFLINE_LOG)
        result_path = Path(run_dir) / RESULT_FILE
        result = json.loads(result_path.read_text()) if result_path.exists() else None
        so_far_path = Path(run_dir) / ERRORS_SO_FAR
        so_far = [json.loads(line) for line in so_far_path.read_text().splitlines()] if so_far_path.exists() else []
    tail = output[-6000:]
    found = f"\n--- errors the validator found (no verdict: some may stem from the above): {len(so_far)}" + "".join(
        f"\n- {error}" for error in so_far)
    if refused:
        raise ValidatorCouldNotRun(
            "the validator needed the network (no local copy shipped by an installed package): "
            + "; ".join(sorted(refused)) + f"{found}\n--- validator output (tail) ---\n{tail}")
    if result is None:
        raise ValidatorCouldNotRun(f"the validator crashed before giving a verdict (exit {done.returncode})"
                                   f"{found}\n--- validator output (tail) ---\n{tail}")
    gave_up = [line for line in output.splitlines() if line.startswith(GAVE_UP_MARK)]
    if gave_up:
        raise ValidatorCouldNotRun("the validator gave up before validating: " + " | ".join(gave_up))
    errors: list[str] = list(result["errors"])
    if done.returncode != (1 if errors else 0):
        raise ValidatorCouldNotRun(f"exit {done.returncode} does not match {len(errors)} errors\n{tail}")
    if "filter" in conformance and FILTER_RAN_MARK not in output:
        errors.append("[harness] --conformance filter was asked for but the validator ran no filter check: the "
                      "landing page does not advertise https://api.stacspec.org/v1.0.0/item-search#filter")
    claimed = _conforms_to(root_url)
    for name, suffix in CLAIM_SUFFIXES.items():
        if name in conformance and not any(uri.startswith("https://api.stacspec.org/") and uri.endswith(suffix)
                                           for uri in claimed):
            errors.append(f"[harness] --conformance {name} passed, but the landing page does not advertise "
                          f"https://api.stacspec.org/v1.0.0{suffix}")
    return ValidatorReport(errors=errors, warnings=list(result["warnings"]), schemas_served=sorted(served),
                           output=output)


def _conforms_to(root_url: str) -> list[str]:
    """The landing page's `conformsTo` (loopback only: `run_validator` checked the URL)."""
    import urllib.request

    with urllib.request.urlopen(root_url, timeout=60) as answer:
        return list(json.load(answer).get("conformsTo") or [])


def _check_validator_version() -> None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("stac-api-validator")
    except PackageNotFoundError:
        raise ValidatorCouldNotRun(f"stac-api-validator is not installed (pip install "
                                   f"stac-api-validator=={VALIDATOR_VERSION})") from None
    if installed != VALIDATOR_VERSION:
        raise ValidatorCouldNotRun(f"stac-api-validator {installed} is installed; this harness knows "
                                   f"{VALIDATOR_VERSION} (its defects and their workarounds are version-specific)")


def _read_offline_log(path: Path) -> tuple[set[str], set[str]]:
    refused: set[str] = set()
    served: set[str] = set()
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            (refused if entry["what"] == "refused" else served).add(entry["target"])
    return refused, served


# ---------------------------------------------------------------- the subprocess side


def _go_offline(run_dir: Path) -> None:
    """Answer schema URLs from local copies; let loopback through; refuse (and record) everything else."""
    import io
    import socket
    import urllib.error
    import urllib.request
    import urllib.response
    from email.message import Message

    import requests
    import requests.adapters
    import urllib3
    from requests.structures import CaseInsensitiveDict

    schemas = local_schemas()
    log_path = run_dir / OFFLINE_LOG

    def record(what: str, target: str) -> None:
        with log_path.open("a") as log:
            log.write(json.dumps({"what": what, "target": target}) + "\n")

    def local_copy(url: str) -> bytes | None:
        data = schemas.get(_key(url))
        if data is not None:
            record("served", _key(url))
        return data

    def refuse(url: str) -> str:
        record("refused", url)
        return f"offline test harness: no local copy of {url}"

    original_send = requests.adapters.HTTPAdapter.send

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        data = local_copy(request.url)
        if data is not None:
            response = requests.Response()
            response.status_code, response.reason, response.url, response.request = 200, "OK", request.url, request
            response.headers = CaseInsensitiveDict({"Content-Type": "application/schema+json"})
            response._content, response.encoding = data, "utf-8"
            return response
        if not is_loopback(urlsplit(request.url).hostname):
            raise requests.exceptions.ConnectionError(refuse(request.url), request=request)
        return original_send(self, request, *args, **kwargs)

    original_pool_urlopen = urllib3.PoolManager.urlopen

    def pool_urlopen(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        data = local_copy(url)
        if data is not None:
            return urllib3.HTTPResponse(body=io.BytesIO(data), status=200, preload_content=False,
                                        headers={"Content-Type": "application/schema+json"})
        if not is_loopback(urlsplit(url).hostname):
            raise urllib3.exceptions.NewConnectionError(None, refuse(url))
        return original_pool_urlopen(self, method, url, *args, **kwargs)

    original_open = urllib.request.OpenerDirector.open

    def opener_open(self: Any, fullurl: Any, *args: Any, **kwargs: Any) -> Any:
        url = fullurl if isinstance(fullurl, str) else fullurl.full_url
        data = local_copy(url)
        if data is not None:
            headers = Message()
            headers["Content-Type"] = "application/schema+json"
            return urllib.response.addinfourl(io.BytesIO(data), headers, url, 200)
        if urlsplit(url).scheme in {"http", "https"} and not is_loopback(urlsplit(url).hostname):
            raise urllib.error.URLError(refuse(url))
        return original_open(self, fullurl, *args, **kwargs)

    original_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if not is_loopback(name):
            raise socket.gaierror(socket.EAI_NONAME, refuse(f"host {name}"))
        return original_getaddrinfo(host, *args, **kwargs)

    requests.adapters.HTTPAdapter.send = send
    urllib3.PoolManager.urlopen = pool_urlopen
    urllib.request.OpenerDirector.open = opener_open
    socket.getaddrinfo = getaddrinfo


def _validate_with_the_official_cli(run_dir: Path, args: list[str]) -> None:
    """Run the validator's own entry point; record its structured verdict next to its normal output.

    Its errors are also logged one by one as it adds them (`Errors.__iadd__` still runs), so a run that
    crashes half-way still tells what it had found."""
    import stac_api_validator.__main__ as cli
    from stac_api_validator.validations import Errors

    add_error = Errors.__iadd__

    def add_and_record(self: Errors, error: Any) -> Errors:
        with (run_dir / ERRORS_SO_FAR).open("a") as log:
            log.write(json.dumps(error if isinstance(error, str) else error[1]) + "\n")
        return add_error(self, error)

    Errors.__iadd__ = add_and_record
    validate_api = cli.validate_api

    def validate_and_record(*pos: Any, **kw: Any) -> Any:
        warnings, errors = validate_api(*pos, **kw)
        (run_dir / RESULT_FILE).write_text(json.dumps({"errors": errors.as_list(),
                                                       "warnings": warnings.as_list()}))
        return warnings, errors

    cli.validate_api = validate_and_record
    cli.main.main(args=args, prog_name="stac-api-validator")


if __name__ == "__main__":
    # Run as a script, this file's folder (tests/) leads sys.path: keep the validator's imports to site-packages.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    run_directory, separator, *validator_args = sys.argv[1:]
    assert separator == "--", "usage: offline_stac_validator.py RUN_DIR -- VALIDATOR_ARGS…"
    _go_offline(Path(run_directory))
    _validate_with_the_official_cli(Path(run_directory), validator_args)
