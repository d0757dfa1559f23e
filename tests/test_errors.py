"""The error table: client failures → rsrt errors with an exit code and an HTTP status, on a real node too."""

from __future__ import annotations

import uuid

import httpx
import opensearchpy
import pytest

from conftest import build_index, run_cli, serving
from rsrt.search.api import create_app
from rsrt.search.errors import (
    ClusterAuthError,
    ClusterError,
    ClusterRejected,
    ClusterTLSError,
    ClusterUnavailable,
    ConfigError,
    IndexNotFound,
    QueryError,
    from_opensearch,
    from_response_error,
)
from rsrt.search.index import delete_index
from rsrt.search.request import SearchRequest
from rsrt.search.schema import ImageRecord, Variant
from rsrt.search.searcher import Searcher


def _transport(status: int, error_type: str, reason: str) -> opensearchpy.TransportError:
    body = {"error": {"type": error_type, "reason": reason, "root_cause": [{"type": error_type, "reason": reason}]},
            "status": status}
    cls = opensearchpy.exceptions.HTTP_EXCEPTIONS.get(status, opensearchpy.TransportError)
    return cls(status, error_type, body)


@pytest.mark.parametrize("status,error_type,reason,expected,exit_code,http_status", [
    (500, "exception", "node crashed", ClusterError, 1, 502),
    (502, "exception", "bad gateway", ClusterError, 1, 502),
    (503, "no_shard_available_action_exception", "all shards failed", ClusterUnavailable, 1, 503),
    (429, "es_rejected_execution_exception", "rejected execution", ClusterUnavailable, 1, 503),
    (400, "search_phase_execution_exception", "all shards failed", ClusterRejected, 1, 502),
    (400, "index_closed_exception", "closed", ClusterRejected, 1, 502),
    (404, "index_not_found_exception", "no such index [x]", IndexNotFound, 2, 503),
    (401, "security_exception", "unauthorized", ClusterAuthError, 1, 503),
    (403, "security_exception", "no permissions for [indices:data/write/index]", ClusterAuthError, 1, 503),
])
def test_the_table_maps_every_status_to_an_rsrt_error(status, error_type, reason, expected, exit_code, http_status):
    error = from_opensearch(_transport(status, error_type, reason), where="http://node:9200", index="rsrt-x")
    assert type(error) is expected, error
    assert (error.exit_code, error.http_status) == (exit_code, http_status)
    assert not isinstance(error, QueryError)  # a server-side failure is never a bad query
    assert "\n" not in str(error)


def test_a_refused_filter_names_its_field_and_permissions_are_named():
    refused = from_opensearch(_transport(400, "query_shard_exception",
                                         "failed to create query: For input string: \"x\" [properties.gsd]"))
    assert isinstance(refused, QueryError) and refused.field == "properties" and refused.http_status == 400
    denied = from_opensearch(_transport(403, "security_exception", "no permissions for [indices:data/write/index]"))
    assert "indices:data/write/index" in str(denied)


def test_connection_failures_and_msearch_entries_use_the_same_table():
    gone = from_opensearch(opensearchpy.ConnectionError("N/A", "refused", ConnectionRefusedError()), where="h:1")
    assert isinstance(gone, ClusterUnavailable) and gone.retry_after and "h:1" in str(gone)
    slow = from_opensearch(opensearchpy.ConnectionTimeout("TIMEOUT", "read timed out", TimeoutError()))
    assert isinstance(slow, ClusterUnavailable)
    entry = {"error": {"type": "index_not_found_exception", "reason": "no such index"}, "status": 404}
    assert isinstance(from_response_error(entry, index="gone"), IndexNotFound)
    busy = {"error": {"type": "search_phase_execution_exception", "reason": "all shards failed",
                      "root_cause": [{"type": "es_rejected_execution_exception", "reason": "queue full"}]},
            "status": 429}
    assert isinstance(from_response_error(busy), ClusterUnavailable)
    assert isinstance(from_opensearch(ConfigError("x")), ConfigError)  # rsrt errors pass through


# ---------------------------------------------------------------------------------------------------
# on the real node: failures of the index under a running searcher are the cluster's, not the query's
# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def small_index(os_client, index_name, tmp_path):
    records = [ImageRecord(image_id=f"img-{i}", variants=[Variant(one_sentence=f"ships in harbour number {i}")])
               for i in range(5)]
    build_index(os_client, index_name, records, tmp_path / "ledger")
    return index_name


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_an_index_deleted_under_a_running_searcher_is_not_a_query_error(os_client, small_index, mode):
    searcher = Searcher(os_client, small_index)
    assert searcher.search(SearchRequest("ships", mode, 3)).hits
    delete_index(os_client, small_index)
    with pytest.raises(IndexNotFound) as raised:
        searcher.search(SearchRequest("ships", mode, 3))
    assert raised.value.exit_code == 2 and raised.value.http_status == 503


@pytest.mark.integration
def test_a_closed_index_is_a_server_side_failure_in_cli_and_api(os_client, small_index, cli_env):
    app = create_app(client=os_client, index=small_index)
    with serving(app) as base, httpx.Client(base_url=base, timeout=60) as http:
        assert http.get("/search", params={"q": "ships", "mode": "hybrid"}).status_code == 200
        os_client.indices.close(index=f"{small_index}-v1")
        try:
            for params in ({"q": "ships", "mode": "hybrid"}, {"q": "ships", "mode": "lexical"}, {}):
                response = http.get("/search", params=params)
                body = response.json()
                assert response.status_code >= 500, (params, body)
                assert body["field"] is None and body["code"] != "InvalidParameterValue", body
            result = run_cli(["search", "ships", "--index", small_index, "--mode", "dense"], cli_env)
            assert result.returncode == 1, result.stderr
            assert "Traceback" not in result.stderr and "error: q:" not in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        finally:
            os_client.indices.open(index=f"{small_index}-v1")


@pytest.mark.integration
def test_a_missing_index_exits_2_naming_it(os_client, cli_env):
    missing = f"rsrt-missing-{uuid.uuid4().hex[:8]}"
    result = run_cli(["search", "ships", "--index", missing, "--mode", "lexical"], cli_env)
    assert result.returncode == 2 and missing in result.stderr and "does not exist" in result.stderr, result.stderr



@pytest.mark.parametrize(("detail", "expected"), [
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate",
     "is not trusted"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate in certificate chain",
     "is not trusted"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired", "has expired"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: IP address mismatch", "not for this host name"),
    ("[SSL: WRONG_VERSION_NUMBER] wrong version number", "does not speak TLS"),
    ("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required", "refused the client certificate"),
    ("[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert certificate expired", "client certificate as expired"),
])
def test_tls_failures_say_which_kind_in_one_line(detail: str, expected: str) -> None:
    import ssl

    error = from_opensearch(opensearchpy.SSLError("N/A", detail, ssl.SSLError(1, detail)),
                            where="https://10.0.0.5:9200")
    assert isinstance(error, ClusterTLSError) and not isinstance(error, ClusterUnavailable)
    assert expected in str(error) and "\n" not in str(error) and error.exit_code == 1
    assert "10.0.0.5" not in str(from_opensearch(opensearchpy.SSLError("N/A", detail, ssl.SSLError(1, detail))))


def test_plain_http_to_a_tls_port_says_use_https() -> None:
    from http.client import RemoteDisconnected

    cause = RemoteDisconnected("Remote end closed connection without response")
    error = from_opensearch(opensearchpy.ConnectionError("N/A", str(cause), cause), where="http://127.0.0.1:9200")
    assert isinstance(error, ClusterTLSError) and "use an https:// URL" in str(error)


def test_a_403_names_the_user_and_the_missing_permission() -> None:
    reason = ("no permissions for [indices:data/write/bulk] and User [name=rsrt-reader, backend_roles=[], "
              "requestedTenant=null]")
    error = from_opensearch(_transport(403, "security_exception", reason))
    assert isinstance(error, ClusterAuthError)
    assert "user 'rsrt-reader' lacks the permission indices:data/write/bulk" in str(error)
    head = from_opensearch(opensearchpy.AuthorizationException(403, "", ""))  # a HEAD request: no body
    assert "lacks a permission this request needs" in str(head)
