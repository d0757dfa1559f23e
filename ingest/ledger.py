"""What an ingest run remembers between runs: checkpoint, caption cache, quarantine and dead letters.

Everything lives in one state folder per index (default `.rsrt/<index>/`), so an interrupted run
(Ctrl-C, node down, machine restart) continues where it stopped and nothing is lost:

- `checkpoint.sqlite`: image ids already written (or quarantined), per index;
- `captions.jsonl`: every VLM answer that passed validation, so a re-run never pays for it twice;
- `quarantine.jsonl`: items that could not be read or captioned, with the reason;
- `dead-letter.jsonl`: documents the cluster refused, with its reason and the document itself.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rsrt.search.schema import CaptionerInfo, Variant


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
        with self._lock:
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
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry}
        with self._lock, path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, ensure_ascii=False, default=_json_default) + "\n")

    def quarantine(self, item: str, reason: str, stage: str, **extra: Any) -> None:
        self._append(self.quarantine_path, {"item": item, "stage": stage, "reason": reason, **extra})

    def dead_letter(self, image_id: str, reason: str, document: dict[str, Any] | None = None) -> None:
        self._append(self.dead_letter_path, {"image_id": image_id, "reason": reason, "document": document})

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _json_default(value: Any) -> Any:
    """Vectors (numpy rows) as numbers, so a dead letter can be re-sent as it was; anything else as text."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else str(value)
