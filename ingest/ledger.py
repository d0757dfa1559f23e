"""What an ingest run remembers between runs: checkpoint, caption cache, quarantine and dead letters.

Everything lives in one state folder per index (default `.rsrt/<index>/`), so an interrupted run
(Ctrl-C, node down, machine restart) continues where it stopped and nothing is lost:

- `checkpoint.sqlite`: image ids already written (or quarantined), per index;
- `captions.jsonl`: every VLM answer that passed validation, so a re-run never pays for it twice;
- `quarantine.jsonl`: items that could not be read or captioned, with the reason;
- `dead-letter.jsonl`: documents the cluster refused, with its reason and the document itself.

Quarantine and dead-letter entries are keyed by item (quarantine: stage, item and where it came from;
dead letters: image id) and carry the run that wrote them: a re-run that meets an item again appends
its new entry at once (a crash loses nothing) and, when it closes, drops the earlier runs' entries for
that item, and the entries of items it indexed (an asset or VLM that was down before), so each file
says what is wrong now, once per item.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rsrt.search.errors import ConfigError
from rsrt.search.schema import CaptionerInfo, Variant


def check_state_dir(folder: Path) -> None:
    """Fail in one line, before anything is created on the cluster, when `folder` cannot hold the state.

    Without a checkpoint a run cannot resume and its quarantine would be lost, so it must not start.
    """
    probe = folder / f".rsrt-write-check-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"state dir {folder}: cannot write the ingest state (checkpoint, quarantine) there "
                          f"({why}); give a writable folder with --state-dir") from None


SHARD_FILE = "shard.json"  # in a shard's state folder: which `--shard` it belongs to


def claim_state_dir(folder: Path, shard: str | None) -> None:
    """Refuse, in one line and before anything is created on the cluster, a run whose `--shard` (`"K/N"`,
    or None) is not the one the state folder belongs to; a shard's first run marks the folder as its own.

    Two runs sharing a state folder would share its checkpoint, caption cache and quarantine: each
    would report the other's items as its own, and one's compaction of the quarantine would drop the
    other's entries while it appends. The mark is created exclusively, so of two shards starting at
    once on one folder, one is refused.
    """
    marker = folder / SHARD_FILE
    if shard is not None and not marker.exists():
        try:
            with marker.open("x", encoding="utf-8") as handle:
                handle.write(json.dumps({"shard": shard}) + "\n")
            return
        except FileExistsError:
            pass  # another shard marked it first: compare with that one below
        except OSError as exc:
            raise ConfigError(f"state dir {folder}: cannot write {SHARD_FILE} ({exc.strerror or type(exc).__name__})"
                              "; give a writable folder with --state-dir") from None
    if not marker.exists():
        return  # an unsharded run on an unsharded folder
    try:
        owner = json.loads(marker.read_text(encoding="utf-8")).get("shard")
    except (OSError, ValueError, AttributeError):
        owner = "?"
    if owner != shard:
        ask = "without --shard" if shard is None else f"with --shard {shard}"
        raise ConfigError(f"state dir {folder} belongs to --shard {owner}: refusing to run {ask} on it "
                          f"(two runs sharing one checkpoint and quarantine); use --shard {owner}, "
                          "or another --state-dir")


class Ledger:
    """Thread-safe: stages in different threads record into it."""

    def __init__(self, folder: Path, scope: str | None = None) -> None:
        """`scope` identifies the index the checkpoint speaks for (its UUID): a checkpoint written for
        another cluster, or for an index since deleted and recreated, is cleared, not trusted.
        The caption cache is kept: captions stay valid whatever index they go to."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(folder / "checkpoint.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS done (image_id TEXT PRIMARY KEY, status TEXT, at REAL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        if scope is not None:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'scope'").fetchone()
            if row is None or row[0] != scope:
                self._db.execute("DELETE FROM done")
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('scope', ?)", (scope,))
        self.quarantine_path = folder / "quarantine.jsonl"
        self.dead_letter_path = folder / "dead-letter.jsonl"
        self.captions_path = folder / "captions.jsonl"
        self._captions: dict[tuple[str, str], dict[str, Any]] | None = None
        self._run = uuid.uuid4().hex[:12]  # marks this run's quarantine and dead-letter entries
        self._earlier: dict[Path, set[str]] = {}  # keys of entries earlier runs wrote, per file
        self._superseded: dict[Path, set[str]] = {}  # of those, the keys this run wrote again
        self._indexed: set[str] = set()  # ids this run wrote: earlier runs' entries for them are out of date

    # checkpoint --------------------------------------------------------------------------------------
    def done(self, image_ids: Iterable[str], include_quarantined: bool = True) -> set[str]:
        """Ids finished by an earlier run: written, or (unless asked to retry them) quarantined."""
        ids = list(image_ids)
        status = "" if include_quarantined else " AND status = 'ingested'"
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT image_id FROM done WHERE image_id IN ({marks}){status}"
                rows = self._db.execute(query, chunk)
                found.update(row[0] for row in rows)
        return found

    def mark(self, image_ids: Iterable[str], status: str = "ingested") -> None:
        now = time.time()
        image_ids = list(image_ids)
        with self._lock:
            if status == "ingested":
                self._indexed.update(image_ids)
            self._db.executemany("INSERT OR REPLACE INTO done VALUES (?, ?, ?)",
                                 [(i, status, now) for i in image_ids])

    def count(self, status: str = "ingested") -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM done WHERE status = ?", (status,)).fetchone()[0])

    # caption cache -----------------------------------------------------------------------------------
    def _load_captions(self) -> dict[tuple[str, str], dict[str, Any]]:
        if self._captions is None:
            self._captions = {}
            if self.captions_path.exists():
                for line in self.captions_path.read_text(encoding="utf-8").splitlines():
                    try:
                        entry = json.loads(line)
                        self._captions[(entry["image_id"], entry["key"])] = entry
                    except (ValueError, KeyError):
                        continue  # a line torn by a crash: that image is simply captioned again
        return self._captions

    def cached_caption(self, image_id: str, key: str) -> tuple[list[Variant], CaptionerInfo] | None:
        with self._lock:
            entry = self._load_captions().get((image_id, key))
        if not entry:
            return None
        return [Variant(**v) for v in entry["variants"]], CaptionerInfo(**entry["captioner"])

    def store_caption(self, image_id: str, key: str, variants: list[Variant], captioner: CaptionerInfo) -> None:
        entry = {"image_id": image_id, "key": key, "variants": [v.to_dict() for v in variants],
                 "captioner": vars(captioner)}
        with self._lock:
            self._load_captions()[(image_id, key)] = entry
            with self.captions_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")

    # quarantine and dead letters ---------------------------------------------------------------------
    def _append(self, path: Path, entry: dict[str, Any]) -> None:
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "run": self._run, **entry}
        key = _entry_key(entry)
        with self._lock:
            if path not in self._earlier:
                self._earlier[path] = {k for e in _read_entries(path) if (k := _entry_key(e)) is not None}
            if key in self._earlier[path]:
                self._superseded.setdefault(path, set()).add(key)
            with path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, ensure_ascii=False, default=_json_default) + "\n")

    def quarantine(self, item: str, reason: str, stage: str, **extra: Any) -> None:
        self._append(self.quarantine_path, {"item": item, "stage": stage, "reason": reason, **extra})

    def dead_letter(self, image_id: str, reason: str, document: dict[str, Any] | None = None) -> None:
        self._append(self.dead_letter_path, {"image_id": image_id, "reason": reason, "document": document})

    def _compact(self, path: Path, indexed: set[str] | frozenset[str] = frozenset()) -> None:
        """Drop the earlier runs' entries for items this run recorded again or indexed (a duplicate of
        an item this run indexed is this run's own entry: it stays); written aside, then renamed."""
        lines = path.read_text(encoding="utf-8").splitlines()
        latest: dict[str, Any] = {}  # key -> the run of its last entry
        parsed: list[tuple[str, dict[str, Any] | None]] = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None  # a line torn by a crash: kept as it is
            parsed.append((line, entry if isinstance(entry, dict) else None))
            if isinstance(entry, dict) and (key := _entry_key(entry)) is not None:
                latest[key] = entry.get("run")
        kept = [line for line, entry in parsed
                if entry is None or (key := _entry_key(entry)) is None
                or (entry.get("run") == latest[key]
                    and (entry.get("run") == self._run or _entry_item(entry) not in indexed))]
        aside = path.with_name(path.name + ".tmp")
        aside.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(aside, path)

    def close(self) -> None:
        with self._lock:
            self._db.close()
            stale = set(self._superseded)
            if self._indexed:  # a file that names an item this run indexed
                stale.update(path for path in (self.quarantine_path, self.dead_letter_path)
                             if any(_entry_item(e) in self._indexed and e.get("run") != self._run
                                    for e in _read_entries(path)))
            for path in stale:
                try:
                    self._compact(path, self._indexed)
                except OSError:
                    pass  # (moved away, disk full): the earlier entries stay beside the new ones, nothing lost
            self._superseded.clear()


def _entry_key(entry: dict[str, Any]) -> str | None:
    """What makes two entries about the same item: a dead letter's image id; a quarantined item's
    stage, name and origin (two files with one image id are two entries)."""
    if "item" in entry:
        origin = entry.get("location") or entry.get("source_uri") or ""
        return json.dumps(["q", entry.get("stage"), entry["item"], origin])
    if "image_id" in entry:
        return f"dead:{entry['image_id']}"
    return None


def _entry_item(entry: dict[str, Any]) -> str | None:
    """The image id an entry is about: a quarantined item's name, a dead letter's image id."""
    item = entry.get("item", entry.get("image_id"))
    return item if isinstance(item, str) else None


def _read_entries(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def _json_default(value: Any) -> Any:
    """Vectors (numpy rows) as numbers, so a dead letter can be re-sent as it was; anything else as text."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)
