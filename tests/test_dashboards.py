"""Dashboards saved objects: their structure for any index name, and the import request Dashboards accepts.

The import runs against a loopback HTTP server that checks the request the way OpenSearch Dashboards'
`/api/saved_objects/_import` does (path, `overwrite=true`, `osd-xsrf` header, multipart field `file` with
a `.ndjson` name, basic auth) and answers like it, so a request Dashboards would refuse fails here too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from click.testing import CliRunner

from rsrt.cli import main
from rsrt.search.dashboards import export_objects, reference_problems, slug, to_ndjson
from rsrt.search.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
NAMES = ["rsrt-images", "my-archive", "rsrt-*", "archive.v2_2024"]
MAPPING = json.loads((REPO / "mappings" / "index-template.json").read_text())["template"]["mappings"]["properties"]


def _by_type(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        out.setdefault(obj["type"], []).append(obj)
    return out


def _aggregatable(field: str) -> bool:
    """What Dashboards can aggregate on: keyword, date, geo_point, numbers, or text with fielddata."""
    spec = MAPPING[field]
    return spec["type"] in {"keyword", "date", "geo_point", "integer"} or bool(spec.get("fielddata"))


# ---------------------------------------------------------------------------------------------------
# export structure
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", NAMES)
def test_export_has_every_object_and_every_reference_resolves(index):
    """References are checked here independently of the module's own checker."""
    objects = export_objects(index)
    kinds = _by_type(objects)
    assert {k: len(v) for k, v in kinds.items()} == {"index-pattern": 1, "search": 1, "visualization": 4,
                                                     "dashboard": 1}
    known = {(obj["type"], obj["id"]) for obj in objects}
    for obj in objects:
        assert obj["id"].startswith(f"rsrt-{slug(index)}-"), obj["id"]
        for ref in obj["references"]:
            assert (ref["type"], ref["id"]) in known, (obj["id"], ref)
        source_json = obj["attributes"].get("kibanaSavedObjectMeta", {}).get("searchSourceJSON")
        markdown = obj["type"] == "visualization" and json.loads(obj["attributes"]["visState"])["type"] == "markdown"
        if obj["type"] in {"search", "visualization"} and not markdown:  # a markdown panel reads no index
            source = json.loads(source_json)
            names = {ref["name"]: ref for ref in obj["references"]}
            assert names[source["indexRefName"]]["type"] == "index-pattern"
    assert "__INDEX__" not in to_ndjson(objects) and "__SLUG__" not in to_ndjson(objects)
    pattern = kinds["index-pattern"][0]["attributes"]
    assert pattern == {"title": index, "timeFieldName": "datetime"}
    dashboard = kinds["dashboard"][0]
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    refs = {ref["name"]: (ref["type"], ref["id"]) for ref in dashboard["references"]}
    on_board = {refs[panel["panelRefName"]] for panel in panels}
    assert on_board == {(o["type"], o["id"]) for o in objects if o["type"] in {"visualization", "search"}}
    assert len({panel["panelIndex"] for panel in panels}) == len(panels)
    assert reference_problems(objects) == []


def test_ids_are_stable_and_distinct_per_index():
    """Same index, same ids (so overwrite=true updates in place); another index never collides."""
    first, again = export_objects("rsrt-images"), export_objects("rsrt-images")
    assert to_ndjson(first) == to_ndjson(again)
    ids = {obj["id"] for obj in first}
    assert "rsrt-rsrt-images-index-pattern" in ids and "rsrt-rsrt-images-dashboard" in ids
    assert not ids & {obj["id"] for obj in export_objects("other-images")}


def test_search_and_visualizations_use_fields_the_index_has():
    """Columns and aggregations name real mapped fields; aggregations only aggregatable ones."""
    kinds = _by_type(export_objects("rsrt-images"))
    search = kinds["search"][0]["attributes"]
    assert search["columns"] == ["image_id", "collection", "datetime", "summary"]
    assert all(column in MAPPING for column in search["columns"])
    seen: dict[str, set[str]] = {}
    for vis in kinds["visualization"]:
        state = json.loads(vis["attributes"]["visState"])
        assert state["title"] == vis["attributes"]["title"]
        fields = {agg["params"]["field"] for agg in state["aggs"] if "field" in agg["params"]}
        assert all(_aggregatable(f) for f in fields), fields
        seen[state["type"]] = fields
    assert seen == {"histogram": {"datetime", "collection"}, "tagcloud": {"feature_terms"}, "tile_map": {"centroid"},
                    "markdown": set()}


def test_the_checker_catches_a_dangling_reference():
    """The packaging check must be able to fail: break one reference and one JSON string."""
    objects = export_objects("rsrt-images")
    objects[1]["references"][0]["id"] = "nowhere"
    objects[-1]["attributes"]["panelsJSON"] = "[{"
    problems = reference_problems(objects)
    assert any("missing index-pattern:nowhere" in p for p in problems)
    assert any("invalid JSON" in p for p in problems)


@pytest.mark.parametrize("bad", ["", "Upper", "a b", "a,b", "a\"b", "_hidden", "a/b"])
def test_names_opensearch_would_refuse_are_refused(bad):
    with pytest.raises(ConfigError):
        export_objects(bad)


def test_cli_export_to_stdout_and_file(tmp_path):
    runner = CliRunner()
    shown = runner.invoke(main, ["dashboards", "export", "--index", "my-archive"])
    assert shown.exit_code == 0, shown.output
    assert [json.loads(line)["id"] for line in shown.stdout.splitlines()] == [
        obj["id"] for obj in export_objects("my-archive")]
    target = tmp_path / "objects.ndjson"
    written = runner.invoke(main, ["dashboards", "export", "--index", "my-archive", "-o", str(target)])
    assert written.exit_code == 0 and target.read_text() == to_ndjson(export_objects("my-archive"))
    refused = runner.invoke(main, ["dashboards", "export", "--index", "Bad Name"])
    assert refused.exit_code == 2 and "not an index or alias name" in refused.output


# ---------------------------------------------------------------------------------------------------
# import request, against a server that checks it like Dashboards
# ---------------------------------------------------------------------------------------------------


class FakeDashboards(BaseHTTPRequestHandler):
    """Accepts only what Dashboards accepts; records the objects; answers with Dashboards' import body."""

    received: list[list[dict[str, Any]]] = []
    headers_seen: list[dict[str, str]] = []
    refuse_ids: set[str] = set()
    credentials = ("admin", "s3cret")

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _bad(self, message: str, status: int = 400) -> None:
        self._answer(status, {"statusCode": status, "error": "Bad Request", "message": message})

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if parts.path != "/api/saved_objects/_import":
            return self._answer(404, {"statusCode": 404, "error": "Not Found", "message": "Not Found"})
        user, password = self.credentials
        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            return self._answer(401, {"statusCode": 401, "error": "Unauthorized", "message": "Unauthorized"})
        if "osd-xsrf" not in {key.lower() for key in self.headers}:
            return self._bad("Request must contain a osd-xsrf header.")
        if parse_qs(parts.query).get("overwrite") != ["true"]:
            return self._bad("expected overwrite=true")
        content_type = self.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            return self._answer(415, {"statusCode": 415, "error": "Unsupported Media Type",
                                      "message": "Unsupported Media Type"})
        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        files = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        if "file" not in files:
            return self._bad('[request body.file]: expected value of type [object] but got [undefined]')
        upload = files["file"]
        if not (upload.get_filename() or "").endswith(".ndjson"):
            return self._bad(f"Invalid file extension {Path(upload.get_filename() or '').suffix}")
        objects = [json.loads(line) for line in upload.get_payload(decode=True).decode().splitlines() if line.strip()]
        type(self).received.append(objects)
        type(self).headers_seen.append({key.lower(): value for key, value in self.headers.items()})
        ok = [o for o in objects if o["id"] not in self.refuse_ids]
        errors = [{"id": o["id"], "type": o["type"], "title": o["attributes"].get("title"),
                   "error": {"type": "missing_references", "message": "Could not find reference"}}
                  for o in objects if o["id"] in self.refuse_ids]
        self._answer(200, {"success": not errors, "successCount": len(ok), "errors": errors, "successResults": [
            {"type": o["type"], "id": o["id"], "overwrite": True, "meta": {"title": o["attributes"].get("title")}}
            for o in ok]})


@contextlib.contextmanager
def fake_dashboards(refuse: set[str] | None = None) -> Iterator[str]:
    FakeDashboards.received, FakeDashboards.headers_seen = [], []
    FakeDashboards.refuse_ids = set(refuse or ())
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeDashboards)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_fake_refuses_what_dashboards_refuses():
    """The checks are real: no xsrf header, a wrong field name or a .json file name are each a 400."""
    ndjson = to_ndjson(export_objects("rsrt-images")).encode()
    with fake_dashboards() as base:
        url = f"{base}/api/saved_objects/_import"
        auth = FakeDashboards.credentials
        cases = [({}, {"file": ("x.ndjson", ndjson)}, "osd-xsrf"),
                 ({"osd-xsrf": "true"}, {"upload": ("x.ndjson", ndjson)}, "body.file"),
                 ({"osd-xsrf": "true"}, {"file": ("x.json", ndjson)}, "extension")]
        for headers, files, reason in cases:
            answer = httpx.post(url, params={"overwrite": "true"}, headers=headers, files=files, auth=auth)
            assert answer.status_code == 400 and reason in answer.json()["message"]
        assert httpx.post(url, params={"overwrite": "true"}, headers={"osd-xsrf": "true"},
                          files={"file": ("x.ndjson", ndjson)}).status_code == 401
        assert FakeDashboards.received == []


def test_cli_import_posts_what_dashboards_accepts_and_reports_it():
    runner = CliRunner()
    with fake_dashboards() as base:
        result = runner.invoke(main, ["dashboards", "import", "--url", base + "/", "--index", "my-archive",
                                      "--user", "admin", "--tenant", "global"],
                               env={"RSRT_DASHBOARDS_PASSWORD": "s3cret"})
        assert result.exit_code == 0, result.output
        assert FakeDashboards.received == [export_objects("my-archive")]
        assert FakeDashboards.headers_seen[0]["securitytenant"] == "global"
    for obj in export_objects("my-archive"):
        assert f"imported {obj['type']}:{obj['id']}  {obj['attributes']['title']}" in result.stdout
    assert "7 saved objects imported" in result.output
    assert "s3cret" not in result.output


def test_cli_import_of_a_file_and_refusals_exit_non_zero(tmp_path):
    """Objects Dashboards refuses are listed with the reason, and the command fails."""
    exported = tmp_path / "objects.ndjson"
    exported.write_text(to_ndjson(export_objects("rsrt-*")))
    refused_id = "rsrt-rsrt---footprints"
    runner = CliRunner()
    with fake_dashboards(refuse={refused_id}) as base:
        result = runner.invoke(main, ["dashboards", "import", "--url", base, "--file", str(exported),
                                      "--user", "admin", "--password", "s3cret"])
    assert result.exit_code == 1, result.output
    assert FakeDashboards.received == [export_objects("rsrt-*")]
    assert f"refused  visualization:{refused_id}  missing_references" in result.output
    assert "refused 1 of the objects" in result.output


def test_cli_import_reports_http_errors_and_unreachable_dashboards():
    runner = CliRunner()
    with fake_dashboards() as base:
        wrong = runner.invoke(main, ["dashboards", "import", "--url", base, "--user", "admin", "--password", "no"])
    assert wrong.exit_code == 1 and "HTTP 401" in wrong.output
    gone = runner.invoke(main, ["dashboards", "import", "--url", base])  # the server has stopped
    assert gone.exit_code == 1 and "could not reach OpenSearch Dashboards" in gone.output
