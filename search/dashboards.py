"""OpenSearch Dashboards saved objects for an rsrt index: export them as NDJSON, import them over HTTP.

The objects live in `rsrt/mappings/dashboards/*.ndjson` with two placeholders: `__INDEX__` (the index or
alias the index pattern names) and `__SLUG__` (the same name made safe for saved-object ids). Ids are
`rsrt-<slug>-<role>`, so exporting twice for one index gives the same ids and an import with
`overwrite=true` updates the objects in place instead of piling up copies.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .errors import ConfigError, RsrtError

TEMPLATE_DIR = "dashboards"
IMPORT_PATH = "/api/saved_objects/_import"
XSRF_HEADER = "osd-xsrf"
# OpenSearch refuses these in index names; `*` stays allowed because an index pattern may be a wildcard.
_FORBIDDEN = set('\\/?"<>| ,#:')
_JSON_STRING_ATTRIBUTES = ("visState", "panelsJSON", "optionsJSON", "uiStateJSON")


class DashboardsError(RsrtError):
    """Dashboards refused the import or could not be reached."""


def slug(index: str) -> str:
    """The index name as an id fragment: lowercase letters, digits, `-`, `_` and `.` only."""
    return re.sub(r"[^a-z0-9_.-]", "-", index.lower())


def check_index_name(index: str) -> str:
    """Refuse names OpenSearch would refuse: they would also break the JSON-in-JSON strings below."""
    if not index or index != index.strip() or index.startswith(("-", "_", "+")):
        raise ConfigError(f"{index!r} is not an index or alias name")
    bad = sorted(set(index) & _FORBIDDEN)
    if bad or any(ord(c) < 32 for c in index) or index != index.lower():
        raise ConfigError(f"{index!r} is not an index or alias name (lowercase, none of {''.join(sorted(_FORBIDDEN))})")
    return index


def template_text() -> str:
    """The packaged NDJSON templates, concatenated in file-name order."""
    folder = resources.files("rsrt.mappings").joinpath(TEMPLATE_DIR)
    names = sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".ndjson"))
    if not names:
        raise ConfigError("no Dashboards templates are packaged in rsrt.mappings/dashboards")
    return "".join(folder.joinpath(name).read_text(encoding="utf-8") for name in names)


def export_objects(index: str) -> list[dict[str, Any]]:
    """The saved objects for `index`: index pattern, saved search, visualizations and the dashboard."""
    name = check_index_name(index)
    text = template_text().replace("__SLUG__", slug(name)).replace("__INDEX__", name)
    objects = [json.loads(line) for line in text.splitlines() if line.strip()]
    problems = reference_problems(objects)
    if problems:  # a broken template is a packaging bug: say which reference
        raise ConfigError("the packaged Dashboards objects are inconsistent: " + "; ".join(problems))
    return objects


def to_ndjson(objects: list[dict[str, Any]]) -> str:
    """One compact JSON object per line, as Dashboards' own export writes them."""
    return "".join(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n" for obj in objects)


def _search_source(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("attributes", {}).get("kibanaSavedObjectMeta") or {}
    raw = meta.get("searchSourceJSON")
    return json.loads(raw) if raw else {}


def reference_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Every reference must point at an object in the set, every `*RefName` must name a reference, and
    the JSON-in-JSON attributes must parse: Dashboards would otherwise show a broken panel, not an error."""
    problems: list[str] = []
    known = {(obj.get("type"), obj.get("id")) for obj in objects}
    ids = [obj.get("id") for obj in objects]
    if len(ids) != len(set(ids)):
        problems.append("duplicate ids")
    for obj in objects:
        where = f"{obj.get('type')}:{obj.get('id')}"
        references = obj.get("references") or []
        names = {ref.get("name") for ref in references}
        for ref in references:
            if (ref.get("type"), ref.get("id")) not in known:
                problems.append(f"{where} refers to missing {ref.get('type')}:{ref.get('id')}")
        attributes = obj.get("attributes") or {}
        try:
            for key in _JSON_STRING_ATTRIBUTES:
                if key in attributes:
                    json.loads(attributes[key])
            source = _search_source(obj)
        except (TypeError, ValueError) as exc:
            problems.append(f"{where} holds invalid JSON ({exc})")
            continue
        wanted = [source["indexRefName"]] if "indexRefName" in source else []
        if obj.get("type") == "dashboard":
            wanted += [panel.get("panelRefName") for panel in json.loads(attributes.get("panelsJSON", "[]"))]
        problems += [f"{where} uses reference {name!r} it does not declare" for name in wanted if name not in names]
    return problems


@dataclass
class ImportResult:
    """What Dashboards answered: the objects it wrote and the ones it refused (with why)."""

    success: bool
    created: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def import_objects(url: str, ndjson: str, *, user: str | None = None, password: str | None = None,
                   tenant: str | None = None, verify: bool | str = True, timeout: float = 60.0,
                   filename: str = "rsrt-dashboards.ndjson") -> ImportResult:
    """POST the NDJSON to Dashboards' saved-objects import, overwriting objects with the same ids.

    Dashboards wants a multipart upload in field `file` whose name ends in `.ndjson`, and the
    `osd-xsrf` header on every write; `securitytenant` picks the tenant when the security plugin is on.
    """
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx ships with the `http` extra
        raise ConfigError("importing into Dashboards needs httpx: pip install 'rsrt-search[http]'") from None
    if not filename.endswith(".ndjson"):
        raise ConfigError("Dashboards only imports files named *.ndjson")
    headers = {XSRF_HEADER: "true"}
    if tenant:
        headers["securitytenant"] = tenant
    auth = (user, password or "") if user else None
    target = url.rstrip("/") + IMPORT_PATH
    try:
        response = httpx.post(target, params={"overwrite": "true"}, headers=headers, auth=auth, verify=verify,
                              timeout=timeout,
                              files={"file": (filename, ndjson.encode("utf-8"), "application/ndjson")})
    except httpx.HTTPError as exc:
        raise DashboardsError(f"could not reach OpenSearch Dashboards at {url} ({type(exc).__name__}: {exc})") from None
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200:
        message = body.get("message") if isinstance(body, dict) else None
        raise DashboardsError(f"Dashboards answered HTTP {response.status_code} to the import: "
                              f"{message or response.text[:300]}")
    if not isinstance(body, dict):
        raise DashboardsError("Dashboards answered the import with something that is not a JSON object")
    return ImportResult(bool(body.get("success")), list(body.get("successResults") or []),
                        list(body.get("errors") or []))
