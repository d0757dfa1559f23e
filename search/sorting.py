"""`sortby` (STAC API Sort extension): parsed once into `SortKey`s, rendered as OpenSearch sort clauses
for filter-only browsing, and applied in rsrt to the ranked candidates of a text search.

Why two places: a browse sorts every match in the cluster (`sort_clauses`); a text search sorts the
first `candidates` images its ranking found (`sort_hits`), the same way in every mode, since
OpenSearch 2.19 sorts a kNN query's k hits but a BM25 query's every match, and a hybrid query
(neural-search 2.16+) sorts without scores. Ties are broken by id, so pages never repeat or skip.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from . import fields
from .errors import QueryError
from .filters import NUMERIC_TYPES

MAX_SORT_KEYS = 8
CORE_SORT_FIELDS: dict[str, tuple[str, str]] = {
    "id": (fields.IMAGE_ID, "keyword"),
    "collection": (fields.COLLECTION, "keyword"),
    "datetime": (fields.DATETIME, "date"),
}
SORTABLE_TYPES = frozenset({"keyword", "constant_keyword", "boolean", "date", "date_nanos"}) | NUMERIC_TYPES
_PROPERTY_NAME = re.compile(r"[A-Za-z0-9_\-:.]+")


@dataclass(frozen=True)
class SortKey:
    """One sort key: a STAC field name (`id`, `collection`, `datetime` or an item property) and its order."""

    field: str
    descending: bool = False

    @property
    def is_property(self) -> bool:
        return self.field not in CORE_SORT_FIELDS

    def as_stac(self) -> dict[str, str]:
        """The key as the Sort extension writes it in a POST body (for links that repeat a search)."""
        name = self.field if not self.is_property else f"properties.{self.field}"
        return {"field": name, "direction": "desc" if self.descending else "asc"}


def _key(name: Any, descending: bool) -> SortKey:
    if not isinstance(name, str) or not name.strip():
        raise QueryError("sortby", f"a sort field must be a name, not {name!r}")
    name = name.strip()
    if name in ("geometry", "bbox"):
        raise QueryError("sortby", f"{name!r} cannot be sorted by; sort by id, collection, datetime or a property")
    if name in CORE_SORT_FIELDS:
        return SortKey(name, descending)
    key = name.removeprefix("properties.")
    if not key or not _PROPERTY_NAME.fullmatch(key):
        raise QueryError("sortby", f"field name {name!r} may hold letters, digits, '_', '-', ':', '.'")
    return SortKey(key, descending)


def parse_sortby(value: Any) -> tuple[SortKey, ...]:
    """GET `+datetime,-id` (a `+` decoded to a space counts as ascending) or POST
    `[{"field": "datetime", "direction": "desc"}]`; QueryError naming `sortby` otherwise.

    Property names may carry the `properties.` prefix or not; whether the index holds the property,
    and whether it is sortable, is checked against the mapping (`sort_clauses`, `Searcher`).
    """
    if value is None or value == "" or value == []:
        return ()
    keys: list[SortKey] = []
    if isinstance(value, str):
        for part in value.split(","):
            text = part.strip()
            if not text:
                raise QueryError("sortby", f"{value!r} has an empty field")
            descending = text.startswith("-")
            keys.append(_key(text[1:] if text[0] in "+-" else text, descending))
    elif isinstance(value, list | tuple):
        for entry in value:
            if isinstance(entry, SortKey):
                keys.append(entry)
                continue
            if not isinstance(entry, dict) or "field" not in entry:
                raise QueryError("sortby", f"each entry is {{\"field\", \"direction\"}}, not {entry!r}"[:200])
            direction = str(entry.get("direction", "asc")).strip().lower()
            if direction not in ("asc", "desc"):
                raise QueryError("sortby", f"direction {entry.get('direction')!r} is not asc or desc")
            keys.append(_key(entry["field"], direction == "desc"))
    else:
        raise QueryError("sortby", "give fields as +name,-name or a list of {field, direction}")
    if len(keys) > MAX_SORT_KEYS:
        raise QueryError("sortby", f"at most {MAX_SORT_KEYS} sort fields")
    names = [key.field for key in keys]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise QueryError("sortby", f"{', '.join(repeated)} is given more than once")
    return tuple(keys)


def property_names(keys: tuple[SortKey, ...]) -> list[str]:
    """The item properties the keys name (their mapped types decide whether they can be sorted by)."""
    return [key.field for key in keys if key.is_property]


def _target(key: SortKey, property_types: dict[str, str]) -> tuple[str, str]:
    """(index field, mapped type) of a key; QueryError naming `sortby` when unknown or unsortable."""
    if not key.is_property:
        return CORE_SORT_FIELDS[key.field]
    kind = property_types.get(key.field)
    if not kind:
        raise QueryError("sortby", f"property {key.field!r} is not in this index "
                                   "(GET /queryables lists those it holds)")
    if kind not in SORTABLE_TYPES:
        raise QueryError("sortby", f"property {key.field!r} holds {kind} values, which cannot be sorted by")
    return fields.property_field(key.field), kind


def sort_clauses(keys: tuple[SortKey, ...], property_types: dict[str, str]) -> list[dict[str, Any]]:
    """OpenSearch sort clauses for the keys, absent values last, then id ascending (stable pages)."""
    clauses: list[dict[str, Any]] = []
    for key in keys:
        index_field, kind = _target(key, property_types)
        clause: dict[str, Any] = {"order": "desc" if key.descending else "asc", "missing": "_last"}
        if not key.is_property:
            clause["unmapped_type"] = kind
        clauses.append({index_field: clause})
    if not any(key.field == "id" for key in keys):
        clauses.append({fields.IMAGE_ID: {"order": "asc", "unmapped_type": "keyword"}})
    return clauses


def candidate_window(candidates: int, k: int, most: int) -> int:
    """How many ranked images a sorted text search orders: the same on every page of `k`."""
    window = max(candidates, k)
    if window > most:
        raise QueryError("sortby", f"a sorted text search orders its first {most} candidates at most; "
                                   f"ask for candidates and limit up to {most}")
    return window


def _source_value(source: dict[str, Any], key: SortKey) -> Any:
    if not key.is_property:
        return source.get(CORE_SORT_FIELDS[key.field][0])
    node: Any = source.get(fields.PROPERTIES) or {}
    if key.field in node:  # a dotted name stored as one key
        return node[key.field]
    for part in key.field.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _comparable(value: Any, kind: str) -> Any:
    """A stored value as something that orders like the cluster orders the mapped type."""
    if isinstance(value, list):
        value = value[0] if value else None  # the cluster sorts a multi-valued field by its minimum; rare here
    if value is None:
        return None
    if kind in ("date", "date_nanos") and isinstance(value, str):
        text = value.strip()
        try:
            moment = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" else text)
        except ValueError:
            return (1, text)
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        return (0, moment.timestamp())
    if isinstance(value, bool):
        return (0, int(value))
    if isinstance(value, int | float):
        return (0, float(value))
    return (1, str(value))


def sort_hits(hits: list[Any], keys: tuple[SortKey, ...], property_types: dict[str, str],
              id_of: Any = lambda hit: hit.image_id, source_of: Any = lambda hit: hit.source) -> list[Any]:
    """Hits (a text search's ranked candidates) in the keys' order: absent values last in either
    direction, ties by id ascending, as `sort_clauses` has the cluster sort a browse."""
    kinds = [_target(key, property_types)[1] for key in keys]
    ordered = sorted(hits, key=id_of)  # lowest priority first; each later pass is stable
    for key, kind in reversed(list(zip(keys, kinds, strict=True))):
        values = [(_comparable(_source_value(source_of(hit) or {}, key), kind), hit) for hit in ordered]
        present = [pair for pair in values if pair[0] is not None]
        present.sort(key=lambda pair: pair[0], reverse=key.descending)
        ordered = [hit for _, hit in present] + [hit for value, hit in values if value is None]
    return ordered
