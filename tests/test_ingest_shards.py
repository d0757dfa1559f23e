"""`--shard K/N`: N processes ingest one archive without overlap, each with its own state.

Unit tests of `Shard` and the sharded source; then the real `rsrt ingest captions` as concurrent
subprocesses against the session node, and the races of N processes starting at once on one index.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from rsrt.ingest.config import IngestConfig
from rsrt.ingest.ledger import SHARD_FILE, check_state_dir, claim_state_dir
from rsrt.ingest.raster import SCENE_PROPERTY
from rsrt.ingest.shards import Shard, ShardedSource, shard_key, sharded
from rsrt.ingest.sources.base import Source, SourceProblem
from rsrt.search.encoder import get_encoder
from rsrt.search.errors import ConfigError
from rsrt.search.index import bulk_load_settings, create_index
from rsrt.search.schema import ImageRecord

RECORDS = 60


# ------------------------------------------------------------------------------------------ Shard, unit


@pytest.mark.parametrize("text", ["0/2", "3/2", "x", "1/0", "", "1/", "/2", "-1/2", "1/2/3", "1.5/2"])
def test_a_bad_shard_is_one_config_error_naming_the_flag(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Shard.parse(text)
    message = str(caught.value)
    assert "--shard" in message and "\n" not in message and caught.value.exit_code == 2


def test_a_shard_parses_prints_and_names_its_state_folder() -> None:
    shard = Shard.parse(" 2/5 ")
    assert (shard.number, shard.count) == (2, 5) and str(shard) == "2/5" and shard.slug == "shard-2-of-5"
    assert Shard.parse("1/1").owns("anything")


def test_every_key_belongs_to_exactly_one_shard_and_the_split_is_even() -> None:
    ids = [f"scene_{n:05d}" for n in range(10_000)]
    for count in (2, 3, 7):
        shards = [Shard(k, count) for k in range(1, count + 1)]
        owners = Counter(sum(1 for s in shards if s.owns(i)) for i in ids)
        assert owners == {1: len(ids)}, count
        sizes = [sum(s.owns(i) for i in ids) for s in shards]
        expected = len(ids) / count
        assert all(abs(size - expected) / expected < 0.05 for size in sizes), (count, sizes)


def test_ownership_is_a_stable_hash_not_pythons_salted_one() -> None:
    """The same keys land on the same shards on every machine and in every process (PYTHONHASHSEED)."""
    keys = [f"image:img_{n:05d}" for n in range(40)]
    here = [Shard(1, 3).owns(k) for k in keys]
    code = ("import json,sys; from rsrt.ingest.shards import Shard; "
            "print(json.dumps([Shard(1, 3).owns(k) for k in json.loads(sys.argv[1])]))")
    for seed in ("1", "2"):
        other = subprocess.run([sys.executable, "-c", code, json.dumps(keys)], capture_output=True, text=True,
                               env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}, check=True)
        assert json.loads(other.stdout) == here
    # pinned: blake2b-64 of the key, modulo N (a change of the hash would re-shard every archive)
    assert [Shard(k, 3).owns("image:img_00000") for k in (1, 2, 3)].count(True) == 1
    assert here[:8] == [_pinned_owner(k) == 1 for k in keys[:8]]


def _pinned_owner(key: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 3 + 1


class _ListSource(Source):
    kind = "list"
    needs_captioning = False

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def describe(self) -> str:
        return "a list"

    def __iter__(self) -> Iterator[Any]:
        yield from self.items


def _chips(scene: str, count: int) -> list[ImageRecord]:
    return [ImageRecord(image_id=f"{scene}_x{n * 256}_y0_256x256", properties={SCENE_PROPERTY: scene})
            for n in range(count)]


def test_chips_of_one_scene_land_on_one_shard_and_problems_on_exactly_one() -> None:
    items: list[Any] = [chip for n in range(30) for chip in _chips(f"scene{n}", 6)]
    items += [ImageRecord(image_id=f"plain{n}") for n in range(30)]
    items += [SourceProblem(f"broken{n}.tif", "not a TIFF") for n in range(20)]
    source = _ListSource(items)
    seen: list[list[Any]] = []
    for k in (1, 2, 3):
        shard_source = sharded(source, Shard(k, 3))
        seen.append(list(shard_source))
        assert shard_source.left_to_others == len(items) - len(seen[-1])
        assert shard_source.count_hint() is None and shard_source.describe() == f"a list [shard {k}/3]"
        assert not shard_source.needs_captioning
    all_keys = [shard_key(item) for part in seen for item in part]
    assert sorted(all_keys) == sorted(shard_key(item) for item in items)  # nothing lost, nothing twice
    for n in range(30):
        holders = {k for k, part in enumerate(seen) if any(
            isinstance(i, ImageRecord) and i.properties.get(SCENE_PROPERTY) == f"scene{n}" for i in part)}
        assert len(holders) == 1, f"scene{n} is split over shards {holders}"
        holder = holders.pop()
        assert sum(1 for i in seen[holder] if getattr(i, "properties", {}).get(SCENE_PROPERTY) == f"scene{n}") == 6
    problems = [i.item for part in seen for i in part if isinstance(i, SourceProblem)]
    assert sorted(problems) == sorted(f"broken{n}.tif" for n in range(20))
    assert all(len({isinstance(i, SourceProblem) for i in part}) == 2 for part in seen)  # spread, not one shard
    assert sharded(source, None) is source and isinstance(sharded(source, Shard(1, 2)), ShardedSource)


def test_each_shard_has_its_own_default_state_folder() -> None:
    assert IngestConfig(index="archive").state_path == Path(".rsrt/archive")
    assert IngestConfig(index="archive", shard=Shard(2, 4)).state_path == Path(".rsrt/archive/shard-2-of-4")
    # an ingest into a version built beside the live one keeps its state under the alias, per shard too
    assert IngestConfig(index="archive-v2", shard=Shard(2, 4)).default_state_path("archive") == Path(
        ".rsrt/archive/shard-2-of-4")
    explicit = IngestConfig(index="archive", shard=Shard(2, 4), state_dir=Path("/data/state"))
    assert explicit.state_path == Path("/data/state")


def test_a_state_folder_belongs_to_the_shard_that_wrote_it(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    check_state_dir(folder)
    claim_state_dir(folder, "1/2")
    assert json.loads((folder / SHARD_FILE).read_text()) == {"shard": "1/2"}
    claim_state_dir(folder, "1/2")  # the same shard again: fine
    for other in ("2/2", "1/3", None):
        with pytest.raises(ConfigError) as caught:
            claim_state_dir(folder, other)
        assert "belongs to --shard 1/2" in str(caught.value) and "\n" not in str(caught.value)
    unsharded = tmp_path / "plain"
    check_state_dir(unsharded)
    claim_state_dir(unsharded, None)
    assert not (unsharded / SHARD_FILE).exists()


def test_of_shards_claiming_one_folder_at_once_exactly_one_wins(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    check_state_dir(folder)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def claim(k: int) -> None:
        barrier.wait()
        try:
            claim_state_dir(folder, f"{k}/8")
            outcomes.append("ok")
        except ConfigError:
            outcomes.append("refused")

    threads = [threading.Thread(target=claim, args=(k,)) for k in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok"] + ["refused"] * 7


# ------------------------------------------------------------------------------ races on one cluster


@pytest.mark.integration
def test_processes_creating_one_index_at_once_share_one_version(os_client, index_name) -> None:
    """N shards start at once: one `-v1` with its alias, no error, no `-v2`."""
    info = get_encoder("all-MiniLM-L6-v2").info()
    barrier = threading.Barrier(6)
    results: list[str] = []
    errors: list[BaseException] = []

    def create() -> None:
        barrier.wait()
        try:
            results.append(create_index(os_client, info, index_name))
        except BaseException as exc:  # what the test is about
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert results == [f"{index_name}-v1"] * 6
    assert sorted(os_client.indices.get(index=f"{index_name}*")) == [f"{index_name}-v1"]
    assert list(os_client.indices.get_alias(index=index_name)) == [f"{index_name}-v1"]


class _SettingsReadHook:
    """The real client, except that its first `indices.get_settings` first lets `before` run: how two
    shards' bulk loads interleave when one starts while the other is changing the settings."""

    def __init__(self, client, before) -> None:
        self._client, self._before = client, before

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    @property
    def indices(self) -> Any:
        hook = self

        class Indices:
            def __getattr__(self, name: str) -> Any:
                return getattr(hook._client.indices, name)

            def get_settings(self, *args: Any, **kwargs: Any) -> Any:
                before, hook._before = hook._before, None
                if before is not None:
                    before()
                return hook._client.indices.get_settings(*args, **kwargs)

        return Indices()


@pytest.mark.integration
def test_a_bulk_load_starting_while_another_changes_the_settings_keeps_the_real_originals(os_client,
                                                                                          index_name) -> None:
    """Shard B reads no saved record, then shard A saves it and drops the replicas, then B reads the
    settings: B must not take A's load settings for the originals, or whichever ends last (B here)
    would leave the index with no replicas."""
    name = create_index(os_client, get_encoder("all-MiniLM-L6-v2").info(), index_name)
    os_client.indices.put_settings(index=name, body={"index": {"refresh_interval": "7s", "number_of_replicas": 1}})
    inside, release, a_ended = threading.Event(), threading.Event(), threading.Event()

    def shard_a() -> None:
        with bulk_load_settings(os_client, index_name):
            inside.set()
            release.wait(60)
        a_ended.set()

    def start_a() -> None:
        threading.Thread(target=shard_a, daemon=True).start()
        assert inside.wait(60)

    with bulk_load_settings(_SettingsReadHook(os_client, start_a), index_name):
        release.set()
        assert a_ended.wait(60)
        index = os_client.indices.get_settings(index=name)[name]["settings"]["index"]
        assert index["number_of_replicas"] == "1"  # A ended: the normal settings while B still loads
    _assert_settings(os_client, name, "7s", "1")


def _assert_settings(client, name: str, refresh: str, replicas: str) -> None:
    index = client.indices.get_settings(index=name)[name]["settings"]["index"]
    assert (index.get("refresh_interval"), index.get("number_of_replicas")) == (refresh, replicas)
    meta = next(iter(client.indices.get_mapping(index=name).values()))["mappings"].get("_meta", {})
    assert "bulk_load_saved" not in meta


# ------------------------------------------------------------------------------ the real CLI, sharded


def _write_captions(path: Path, count: int = RECORDS, bad_lines: int = 0) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(count):
            variants = [{"one_sentence": f"Scene {i} variant {j}: a harbour with {j + 2} ships.",
                         "feature": f"ships (small) north; dock (large) south; {i % 7} cranes east",
                         "caption": f"A gray port seen from above, numbered {i}, with {j + 2} ships moored."}
                        for j in range(5)]
            handle.write(json.dumps({"image": f"img_{i:05d}.jpg", "collection": "synthetic",
                                     "datetime": f"2021-0{1 + i % 9}-15T10:00:00Z", "variants": variants}) + "\n")
        for n in range(bad_lines):
            handle.write(f"{{this is not json {n}\n")
    return path


def _rsrt() -> str:
    return shutil.which("rsrt", path=str(Path(sys.executable).parent)) or "rsrt"


def _ingest_args(captions: Path, index: str, *extra: str) -> list[str]:
    return ["ingest", "captions", str(captions), "--index", index, "--no-cluster-model", "--json", *extra]


def _concurrently(arg_lists: list[list[str]], env: dict[str, str], cwd: Path) -> list[dict[str, Any]]:
    """Start every `rsrt …` at once (as N machines would), wait for all; their JSON summaries."""
    procs = [subprocess.Popen([_rsrt(), *args], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for args in arg_lists]
    summaries = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        summaries.append(json.loads(out))
    return summaries


def _checkpoint(folder: Path) -> set[str]:
    with sqlite3.connect(folder / "checkpoint.sqlite") as db:
        return {row[0] for row in db.execute("SELECT image_id FROM done WHERE status = 'ingested'")}


def _documents(client, index: str) -> dict[str, dict[str, Any]]:
    client.indices.refresh(index=index)
    hits = client.search(index=index, body={"size": 1000, "query": {"match_all": {}}})["hits"]["hits"]
    return {hit["_id"]: hit["_source"] for hit in hits}


@pytest.mark.integration
def test_two_concurrent_shards_ingest_everything_once_each_with_its_own_state(os_client, index_name, cli_env,
                                                                                 tmp_path) -> None:
    captions = _write_captions(tmp_path / "captions.jsonl", bad_lines=4)
    work = tmp_path / "work"  # the default state dirs (.rsrt/<index>/shard-K-of-2) go under the processes' cwd
    work.mkdir()
    one, two = _concurrently([_ingest_args(captions, index_name, "--shard", f"{k}/2") for k in (1, 2)], cli_env, work)

    folders = [work / ".rsrt" / index_name / f"shard-{k}-of-2" for k in (1, 2)]
    assert [Path(s["state_dir"]) for s in (one, two)] == [Path(".rsrt") / index_name / f"shard-{k}-of-2"
                                                          for k in (1, 2)]
    written = [_checkpoint(folder) for folder in folders]
    assert not written[0] & written[1], "an id was written by both shards"
    assert len(written[0] | written[1]) == RECORDS and all(written)
    assert one["ingested"] + two["ingested"] == RECORDS
    assert (one["shard"], two["shard"]) == ("1/2", "2/2")
    assert one["seen"] + one["left_to_other_shards"] == RECORDS + 4 == two["seen"] + two["left_to_other_shards"]
    # the bad lines are quarantined once in all: N shards' quarantines add up to one run's
    assert one["quarantined"] + two["quarantined"] == 4
    quarantined = [json.loads(line)["item"] for folder in folders if (folder / "quarantine.jsonl").exists()
                   for line in (folder / "quarantine.jsonl").read_text().splitlines()]
    assert len(quarantined) == len(set(quarantined)) == 4
    for k, folder in enumerate(folders, 1):
        assert json.loads((folder / SHARD_FILE).read_text()) == {"shard": f"{k}/2"}

    assert set(_documents(os_client, index_name)) == written[0] | written[1]
    assert int(os_client.count(index=index_name)["count"]) == RECORDS
    concrete = next(iter(os_client.indices.get_alias(index=index_name)))
    _assert_settings(os_client, concrete, "1s", "0")

    # a re-run of shard 1 (its own state) ingests nothing
    again = subprocess.run([_rsrt(), *_ingest_args(captions, index_name, "--shard", "1/2")], env=cli_env, cwd=work,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["ingested"] == 0 and json.loads(again.stdout)["skipped"] == one["ingested"]

    # another --shard (or none) on shard 1/2's state dir: refused in one line, before touching the cluster
    for other in (["--shard", "1/3"], []):
        refused = run_cli(_ingest_args(captions, f"{index_name}-other", "--state-dir", str(folders[0]), *other),
                          cli_env)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "belongs to --shard 1/2" in lines[0], refused.stderr
        assert not os_client.indices.exists(index=f"{index_name}-other"), "created before refusing"

    # shards loading an index with other settings put them back, whichever ends last
    os_client.indices.put_settings(index=concrete, body={"index": {"refresh_interval": "7s",
                                                                   "number_of_replicas": 1}})
    overwritten = _concurrently([_ingest_args(captions, index_name, "--shard", f"{k}/2", "--overwrite")
                                 for k in (1, 2)], cli_env, work)
    assert sum(s["ingested"] for s in overwritten) == RECORDS
    _assert_settings(os_client, concrete, "7s", "1")
    assert int(os_client.count(index=index_name)["count"]) == RECORDS


@pytest.mark.integration
@pytest.mark.parametrize("bad", ["0/2", "3/2", "x"])
def test_a_bad_shard_flag_is_one_line_and_exit_2(cli_env, tmp_path, bad: str) -> None:
    captions = _write_captions(tmp_path / "c.jsonl", count=2)
    result = run_cli(_ingest_args(captions, "rsrt-never-made", "--shard", bad), cli_env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--shard" in lines[0] and "Traceback" not in result.stderr, result.stderr


@pytest.fixture
def other_index(os_client) -> Iterator[str]:
    name = f"rsrt-test-{uuid.uuid4().hex[:10]}"
    yield name
    for concrete in os_client.indices.get(index=f"{name}*", params={"expand_wildcards": "all"}):
        os_client.indices.delete(index=concrete)


@pytest.mark.integration
def test_three_sequential_shards_give_the_documents_of_one_run(os_client, index_name, other_index, cli_env,
                                                                tmp_path) -> None:
    captions = _write_captions(tmp_path / "captions.jsonl")
    whole = run_cli(_ingest_args(captions, other_index, "--state-dir", str(tmp_path / "whole")), cli_env)
    assert whole.returncode == 0, whole.stderr
    parts = []
    for k in (1, 2, 3):
        part = run_cli(_ingest_args(captions, index_name, "--shard", f"{k}/3",
                                    "--state-dir", str(tmp_path / f"part{k}")), cli_env)
        assert part.returncode == 0, part.stderr
        parts.append(json.loads(part.stdout))
    assert [p["ingested"] + p["left_to_other_shards"] for p in parts] == [RECORDS] * 3
    assert all(p["ingested"] for p in parts)
    assert _documents(os_client, index_name) == _documents(os_client, other_index)
    assert len(_documents(os_client, index_name)) == RECORDS


@pytest.mark.integration
def test_processes_registering_one_model_at_once_end_with_one(os_client, tmp_path) -> None:
    """N shards deploying at once: every one gets the same model id and the cluster holds one registration.

    A small file stands in for the ONNX zip (registration checks only its hash; nothing deploys it)."""
    import hashlib

    from rsrt.search import ml

    path = tmp_path / "model.zip"
    path.write_bytes(b"not a model, only registered " + uuid.uuid4().hex.encode())
    export = ml.ModelExport(path, f"shard-race-{uuid.uuid4().hex[:8]}", hashlib.sha256(path.read_bytes()).hexdigest(),
                            path.stat().st_size, 384, "bert")
    barrier = threading.Barrier(8)  # 8 at once: registrations and deletions race on the model group (HTTP 409)
    ids: list[str] = []
    errors: list[BaseException] = []

    def register() -> None:
        barrier.wait()
        try:
            ids.append(ml.register_once(os_client, export))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    registered = [m["model_id"] for m in ml._find_models(
        os_client, {"term": {"model_content_hash_value": export.content_hash}})]
    try:
        assert not errors, errors
        assert len(set(ids)) == 1 and len(ids) == 8
        assert registered == ids[:1], registered
        assert ml.get_model(os_client, ids[0])["model_state"] == "REGISTERED"
    finally:
        for model_id in registered:
            ml.ml_request(os_client, "DELETE", f"/_plugins/_ml/models/{model_id}")


@pytest.mark.integration
def test_only_shard_1_deploys_the_cluster_model(os_client, index_name, cli_env, tmp_path) -> None:
    """Shards other than 1 leave the deploy to it (no N exports and uploads of one model)."""
    from rsrt.search.index import read_meta
    from rsrt.search.ml import has_ml_commons

    assert has_ml_commons(os_client)  # else the shard would deploy nothing anyway
    captions = _write_captions(tmp_path / "c.jsonl", count=6)
    args = ["ingest", "captions", str(captions), "--index", index_name, "--shard", "2/2", "--json",
            "--state-dir", str(tmp_path / "s2")]
    result = run_cli(args, cli_env)
    assert result.returncode == 0, result.stderr
    assert "cluster_model" not in read_meta(os_client, index_name)
    assert "warning" not in result.stderr


@pytest.mark.integration
def test_with_the_cluster_embedding_the_other_shards_wait_for_shard_1s_model(os_client, index_name, cli_env,
                                                                             tmp_path) -> None:
    captions = _write_captions(tmp_path / "captions.jsonl", count=20)
    work = tmp_path / "work"
    work.mkdir()
    summaries = _concurrently([["ingest", "captions", str(captions), "--index", index_name, "--embed", "cluster",
                                "--json", "--shard", f"{k}/2"] for k in (2, 1)], cli_env, work)
    assert sum(s["ingested"] for s in summaries) == 20 and all(s["ingested"] for s in summaries)
    os_client.indices.refresh(index=index_name)
    with_vectors = {"nested": {"path": "variants", "query": {"exists": {"field": "variants.embedding"}}}}
    assert os_client.count(index=index_name, body={"query": with_vectors})["count"] == 20


def test_a_hostile_item_name_still_has_a_shard() -> None:
    """A lone surrogate (a probe's item name, reported as a problem) must not stop the run (UnicodeEncodeError)."""
    from rsrt.ingest.sources import SourceProblem

    problem = SourceProblem("bad\udfff.jpg", "not a readable image", "captions.jsonl:3")
    assert Shard(1, 1).owns(shard_key(problem))
    assert sum(Shard(k, 3).owns(shard_key(problem)) for k in (1, 2, 3)) == 1
