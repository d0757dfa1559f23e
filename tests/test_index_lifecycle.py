"""Index lifecycle against the real node (issue #15): what `rsrt index delete` may delete, building a
new version beside the live one, and what a SIGKILLed ingest leaves behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from rsrt.ingest.ledger import Ledger
from rsrt.search.index import BULK_LOAD_REFRESH, create_index

pytestmark = pytest.mark.integration

ENCODER = {"name": "all-MiniLM-L6-v2", "dimension": 384}
NO_MODEL = "--no-cluster-model"  # these tests are about indices, not about deploying the encoder in the cluster


def _write_captions(path: Path, count: int, start: int = 0) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for i in range(start, start + count):
            variants = [{"one_sentence": f"Scene {i}, variant {j}: a harbour with {j + 2} ships.",
                         "feature": f"ships (small) north; dock (large) south; {i % 7} cranes east",
                         "caption": f"A port seen from above, number {i}, with {j + 2} ships at the dock."}
                        for j in range(5)]
            handle.write(json.dumps({"image": f"img_{i:05d}.jpg", "variants": variants}) + "\n")


def _alias_targets(os_client, alias: str) -> list[str]:
    return sorted(os_client.indices.get_alias(name=alias))


def _settings(os_client, name: str) -> dict:
    return os_client.indices.get_settings(index=name)[name]["settings"]["index"]


def test_delete_removes_only_the_versions_rsrt_created(os_client, index_name, cli_env):
    create_index(os_client, ENCODER, index_name)
    os_client.indices.create(index=f"{index_name}-vault")  # another tool's index, matching `<alias>-v*`
    os_client.indices.create(index=f"{index_name}-v9")  # a version name, made by hand (the template's mappings)
    result = run_cli(["index", "delete", "--index", index_name, "--yes"], cli_env)
    assert result.returncode == 0, result.stderr
    assert f"deleted {index_name}-v1" in result.stdout
    assert not os_client.indices.exists(index=f"{index_name}-v1")
    assert os_client.indices.exists(index=f"{index_name}-vault")
    assert os_client.indices.exists(index=f"{index_name}-v9")
    left = [line for line in result.stderr.splitlines() if line.startswith("left ")]
    assert len(left) == 1 and f"{index_name}-v9" in left[0] and f"{index_name}-vault" in left[0], result.stderr
    # a second delete finds nothing of rsrt's, and still touches nothing else
    again = run_cli(["index", "delete", "--index", index_name, "--yes"], cli_env)
    assert again.returncode == 0 and "no rsrt index" in again.stdout, again.stdout + again.stderr
    assert os_client.indices.exists(index=f"{index_name}-vault")


def test_a_new_version_is_built_beside_the_live_one_and_promoted_when_complete(os_client, index_name, cli_env,
                                                                               tmp_path):
    alias = index_name
    old, new = tmp_path / "old.jsonl", tmp_path / "new.jsonl"
    _write_captions(old, 6)
    _write_captions(new, 9, start=100)
    first = run_cli(["ingest", "captions", str(old), "--index", alias, NO_MODEL, "--state-dir",
                     str(tmp_path / "s1"), "--json"], cli_env)
    assert first.returncode == 0, first.stderr

    created = run_cli(["index", "create", "--index", alias, "--new-version", NO_MODEL], cli_env)
    assert created.returncode == 0, created.stderr
    assert f"{alias}-v2 built beside" in created.stdout and "rsrt index promote" in created.stdout
    assert _alias_targets(os_client, alias) == [f"{alias}-v1"]  # search still answers from the old version
    assert os_client.count(index=alias)["count"] == 6

    empty = run_cli(["index", "promote", "--index", alias, NO_MODEL], cli_env)
    assert empty.returncode == 2 and "no documents" in empty.stderr and "Traceback" not in empty.stderr
    assert _alias_targets(os_client, alias) == [f"{alias}-v1"]

    # Filling the new version by its name; without --state-dir the state is the alias's (caption cache).
    work = tmp_path / "cwd"
    work.mkdir()
    rsrt = shutil.which("rsrt", path=str(Path(sys.executable).parent)) or "rsrt"
    fill = subprocess.run([rsrt, "ingest", "captions", str(new), "--index", f"{alias}-v2", NO_MODEL, "--json"],
                          env=cli_env, cwd=work, capture_output=True, text=True, timeout=600)
    assert fill.returncode == 0, fill.stderr
    assert json.loads(fill.stdout)["ingested"] == 9
    assert (work / ".rsrt" / alias / "checkpoint.sqlite").exists() and not (work / ".rsrt" / f"{alias}-v2").exists()
    assert _alias_targets(os_client, alias) == [f"{alias}-v1"]
    assert os_client.count(index=alias)["count"] == 6

    stats = run_cli(["index", "stats", "--index", alias], cli_env)
    assert f"pending:   {alias}-v2" in stats.stdout, stats.stdout

    promoted = run_cli(["index", "promote", "--index", alias, NO_MODEL], cli_env)
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.startswith(f"{alias} -> {alias}-v2") and f"was {alias}-v1" in promoted.stdout
    assert _alias_targets(os_client, alias) == [f"{alias}-v2"]
    assert os_client.count(index=alias)["count"] == 9
    assert os_client.indices.exists(index=f"{alias}-v1")  # kept: promoting it again is the rollback
    rollback = run_cli(["index", "promote", "--index", alias, "--version", "1", NO_MODEL], cli_env)
    assert rollback.returncode == 0 and _alias_targets(os_client, alias) == [f"{alias}-v1"], rollback.stderr

    foreign = f"{alias}-v7"
    os_client.indices.create(index=foreign)
    refused = run_cli(["index", "promote", "--index", alias, "--version", foreign, NO_MODEL], cli_env)
    assert refused.returncode == 2 and "not a version rsrt created" in refused.stderr
    assert _alias_targets(os_client, alias) == [f"{alias}-v1"]


def test_a_killed_ingest_leaves_its_documents_searchable(os_client, index_name, cli_env, tmp_path):
    """SIGKILL of `rsrt ingest` (no cleanup runs): what it wrote is counted within the bulk-load refresh
    interval, with no other command; `rsrt index repair` restores the settings; a re-run completes."""
    total = 400
    captions = tmp_path / "many.jsonl"
    _write_captions(captions, total)
    state = tmp_path / "state"
    rsrt = shutil.which("rsrt", path=str(Path(sys.executable).parent)) or "rsrt"
    args = [rsrt, "ingest", "captions", str(captions), "--index", index_name, "--state-dir", str(state),
            "--batch-size", "16", "--workers", "1", NO_MODEL, "--json"]
    proc = subprocess.Popen(args, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        written = 0
        while time.monotonic() < deadline and proc.poll() is None and written < 48:
            if (state / "checkpoint.sqlite").exists():
                ledger = Ledger(state)
                written = ledger.count()
                ledger.close()
            time.sleep(0.1)
        assert proc.poll() is None, f"ingest ended before the kill: {proc.communicate()}"
        assert written >= 48
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    seconds = float(BULK_LOAD_REFRESH.rstrip("s"))
    deadline = time.monotonic() + seconds + 20
    count = 0
    while time.monotonic() < deadline and count < written:
        count = int(os_client.count(index=index_name)["count"])  # a plain count: no refresh of our own
        time.sleep(1)
    assert count >= written, f"{count} of {written} written documents searchable {seconds + 20:.0f}s after the kill"
    version = f"{index_name}-v1"
    assert _settings(os_client, version)["number_of_replicas"] == "0"  # the load's, until repaired

    stats = run_cli(["index", "stats", "--index", index_name], cli_env)
    assert stats.returncode == 0 and f"unfinished on {version}" in stats.stdout, stats.stdout + stats.stderr
    repair = run_cli(["index", "repair", "--index", index_name], cli_env)
    assert repair.returncode == 0, repair.stderr
    assert f"{version}: restored refresh_interval 1s, 0 replicas" in repair.stdout
    assert _settings(os_client, version)["refresh_interval"] == "1s"
    assert "bulk_load_saved" not in os_client.indices.get_mapping(index=version)[version]["mappings"]["_meta"]
    again = run_cli(["index", "repair", "--index", index_name], cli_env)
    assert "nothing to repair" in again.stdout

    rerun = run_cli(args[1:], cli_env)
    assert rerun.returncode == 0, rerun.stderr
    os_client.indices.refresh(index=index_name)
    assert os_client.count(index=index_name)["count"] == total
    assert _settings(os_client, version)["refresh_interval"] == "1s"
