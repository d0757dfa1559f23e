"""CQL2 filters (STAC API Filter extension): parsed and validated by the `cql2` library, translated
here to one OpenSearch clause that `Filters.clauses` renders like every other filter.

Why a translation of our own: stac-fastapi's `sfeos_helpers.filter.to_es` is a test-only dependency
here, matches `like` case-insensitively, has no temporal operators, passes `BBOX(...)` literals
through as invalid shapes and converts no value to the index's mapped type; pygeofilter would add
lark, dateparser and opensearch-dsl for the same walk. The walk is small; the grammar is the library's.

Supported: basic CQL2 (=, <>, <, <=, >, >=, and/or/not, isNull), advanced comparison (like,
between, in), case-insensitive comparison (`casei`), basic spatial on `geometry` (s_intersects,
s_within, s_contains, s_disjoint with GeoJSON or BBOX literals) and temporal operators on date fields
(t_intersects, t_equals, t_before, t_after, t_during, t_disjoint with instants, dates and intervals).
Logic is two-valued: a comparison with an absent value is false, `not` is its complement.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import cql2 as cql2_library

from . import fields
from .errors import QueryError
from .filters import NUMERIC_TYPES, parse_bbox, parse_instant, property_value
from .geometry import bare_geometry, bbox_geometry, check_geometry

LANGUAGES = ("cql2-text", "cql2-json")
MAX_FILTER_CHARS = 20_000  # far past any hand-written filter; bounds the parser's work
MAX_DEPTH = 64  # nesting of operators: deeper is machine-made and would only cost stack

# STAC names with a field of their own in the index (everything else is an item property).
CORE_FIELDS: dict[str, tuple[str, str]] = {
    "id": (fields.IMAGE_ID, "keyword"),
    "collection": (fields.COLLECTION, "keyword"),
    "datetime": (fields.DATETIME, "date"),
    "geometry": (fields.GEOMETRY, "geo_shape"),
}
COMPARISONS = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte"}
SPATIAL = {"s_intersects": "intersects", "s_within": "within", "s_contains": "contains", "s_disjoint": "disjoint"}
TEMPORAL = ("t_intersects", "t_equals", "t_before", "t_after", "t_during", "t_disjoint")
STRING_TYPES = frozenset({"keyword", "constant_keyword", "wildcard"})
_PROPERTY_NAME = re.compile(r"[A-Za-z0-9_\-:.]+")


def _refuse(message: str) -> QueryError:
    return QueryError("filter", message[:300])


def _one_line(exc: Exception) -> str:
    """The cql2 parser's multi-line message as one line: where it stopped and what it expected."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    where = next((line.removeprefix("-->").strip() for line in lines if line.startswith("-->")), "")
    what = next((line.removeprefix("=").strip() for line in lines if line.startswith("=")), "")
    if where or what:
        return f"at {where}: {what}".strip(": ")
    return lines[0] if lines else type(exc).__name__


def parse_filter(value: str | dict[str, Any], lang: str | None = None) -> dict[str, Any]:
    """CQL2 text or JSON (`filter-lang`; default: text for a string, JSON for an object) as validated
    CQL2 JSON; QueryError naming `filter` (or `filter-lang`) with one line otherwise."""
    if lang is not None and lang not in LANGUAGES:
        raise QueryError("filter-lang", f"{lang!r} is not one of {', '.join(LANGUAGES)}")
    if isinstance(value, str) and len(value) > MAX_FILTER_CHARS:
        raise _refuse(f"is longer than {MAX_FILTER_CHARS} characters")
    try:
        if isinstance(value, dict):
            if lang == "cql2-text":
                raise _refuse("filter-lang cql2-text needs the filter as text, not a JSON object")
            if len(json.dumps(value)) > MAX_FILTER_CHARS:
                raise _refuse(f"is longer than {MAX_FILTER_CHARS} characters")
            expression = cql2_library.Expr(value)
        elif isinstance(value, str) and value.strip():
            parse = cql2_library.parse_json if lang == "cql2-json" else cql2_library.parse_text
            expression = parse(value)
        else:
            raise _refuse("give a CQL2 expression (text, or JSON with filter-lang cql2-json)")
        expression.validate()
        parsed = expression.to_json()
    except QueryError:
        raise
    except (cql2_library.ParseError, cql2_library.ValidationError, ValueError, TypeError) as exc:
        raise _refuse(f"is not valid CQL2 ({_one_line(exc)})") from None
    _walk_depth(parsed, 0)
    return parsed


def _walk_depth(node: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _refuse(f"nests operators more than {MAX_DEPTH} deep")
    if isinstance(node, dict):
        for item in node.get("args", []) if "op" in node else []:
            _walk_depth(item, depth + 1)


def _references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "property" in node:
            yield str(node["property"])
        for item in node.get("args", []) if "op" in node else []:
            yield from _references(item)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


def _property_key(name: str) -> str:
    """An item property's name in the index: `eo:cloud_cover` and `properties.eo:cloud_cover` alike."""
    key = name.removeprefix("properties.")
    if not key or not _PROPERTY_NAME.fullmatch(key):
        raise _refuse(f"property name {name!r} may hold letters, digits, '_', '-', ':', '.'")
    return key


def _core_name(name: str) -> str:
    """`properties.datetime` is the item's datetime (STAC keeps it among the properties)."""
    return "datetime" if name == "properties.datetime" else name


def property_names(expression: dict[str, Any]) -> list[str]:
    """The item properties a CQL2 filter names (the `Searcher` reads their mapped types)."""
    names: list[str] = []
    for name in map(_core_name, _references(expression)):
        if name not in CORE_FIELDS:
            key = _property_key(name)
            if key not in names:
                names.append(key)
    return names


def _has_casei(node: Any) -> bool:
    if isinstance(node, list):
        return any(_has_casei(item) for item in node)
    return isinstance(node, dict) and (node.get("op") in ("casei", "accenti") or _has_casei(node.get("args", [])))


_KNN_SAFE_TEMPORAL = ("t_intersects", "t_equals", "t_before", "t_after", "t_during")


def knn_prefilter_safe(expression: Any) -> bool:
    """Whether the filter renders to term and range clauses joined by and/or only: the clauses k-NN 2.19
    applies correctly inside a nested kNN filter (`Filters.exact_only` says why the others are not)."""
    if not isinstance(expression, dict) or "op" not in expression:
        return False
    op, args = str(expression["op"]).lower(), expression.get("args") or []
    if op in ("and", "or"):
        return all(knn_prefilter_safe(arg) for arg in args)
    if _has_casei(args):  # anywhere below, e.g. IN (CASEI('a'), ...)
        return False
    if any(isinstance(arg, dict) and arg.get("property") == "geometry" for arg in args):
        return False
    if op in ("=", "<", "<=", ">", ">=", "between", "in"):
        return True
    if op in _KNN_SAFE_TEMPORAL:
        bounds = next((arg.get("interval") for arg in args if isinstance(arg, dict) and "interval" in arg), None)
        return bounds != ["..", ".."]
    return False


class _Translator:
    """One CQL2 JSON expression → one OpenSearch clause, with values converted to mapped types."""

    def __init__(self, property_types: dict[str, str]) -> None:
        self.types = property_types

    # fields -------------------------------------------------------------------------------------
    def field(self, node: Any, op: str) -> tuple[str, str, str, bool]:
        """(index field, mapped type, name as given, case-insensitive) of an operand that must be a property."""
        insensitive = False
        if isinstance(node, dict) and node.get("op") == "casei":
            insensitive, node = True, (node.get("args") or [None])[0]
        if isinstance(node, dict) and node.get("op") == "accenti":
            raise _refuse("accenti (accent-insensitive comparison) is not supported")
        if not isinstance(node, dict) or "property" not in node:
            raise _refuse(f"{op} needs a property on one side, got {json.dumps(node)[:80]}")
        name = _core_name(str(node["property"]))
        if name in CORE_FIELDS:
            index_field, kind = CORE_FIELDS[name]
            return index_field, kind, name, insensitive
        key = _property_key(name)
        kind = self.types.get(key)
        if not kind:
            raise _refuse(f"property {name!r} is not in this index (GET /queryables lists those it holds)")
        return fields.property_field(key), kind, name, insensitive

    @staticmethod
    def is_property(node: Any) -> bool:
        if isinstance(node, dict) and node.get("op") in ("casei", "accenti"):
            node = (node.get("args") or [None])[0]
        return isinstance(node, dict) and "property" in node

    def operands(self, op: str, args: list[Any]) -> tuple[tuple[str, str, str, bool], Any, bool]:
        """(the property, the literal, swapped): `10 < cloud_cover` is `cloud_cover > 10`."""
        if len(args) != 2:
            raise _refuse(f"{op} takes two arguments, got {len(args)}")
        left, right = args
        if self.is_property(left) and self.is_property(right):
            raise _refuse(f"{op} between two properties is not supported; compare a property with a value")
        if self.is_property(left):
            return self.field(left, op), right, False
        if self.is_property(right):
            return self.field(right, op), left, True
        raise _refuse(f"{op} needs a property on one side")

    # values -------------------------------------------------------------------------------------
    @staticmethod
    def strip_casei(value: Any) -> tuple[Any, bool]:
        if isinstance(value, dict) and value.get("op") == "casei":
            return (value.get("args") or [None])[0], True
        if isinstance(value, dict) and value.get("op") == "accenti":
            raise _refuse("accenti (accent-insensitive comparison) is not supported")
        return value, False

    def value(self, target: tuple[str, str, str, bool], literal: Any, last: bool = False) -> Any:
        """A literal as the field's mapped type wants it; a date literal is its day's first instant
        (its last with `last`: `datetime <= DATE('2020-01-31')` takes in all of the 31st)."""
        _, kind, name, _ = target
        literal, _ = self.strip_casei(literal)
        if isinstance(literal, dict) and ("timestamp" in literal or "date" in literal or "interval" in literal):
            if kind != "date":
                raise _refuse(f"{name!r} holds {kind} values, not dates")
            if "interval" in literal:
                raise _refuse(f"{name!r}: an INTERVAL is compared through a t_ operator (T_INTERSECTS ...)")
            start, end = self.instants(literal, name)
            return end if last else start
        if isinstance(literal, dict | list):
            raise _refuse(f"{name!r} is compared with {json.dumps(literal)[:80]}, which is not a value")
        if literal is None:
            raise _refuse(f"{name!r}: compare with NULL through IS NULL")
        if kind == "geo_shape":
            raise _refuse(f"{name!r} is a geometry: use a spatial operator (s_intersects ...)")
        if kind in STRING_TYPES:
            if not isinstance(literal, str):
                raise _refuse(f"{name!r} holds text; {literal!r} is not text (quote it)")
            return literal
        if kind == "date":
            if not isinstance(literal, str):
                raise _refuse(f"{name!r} holds dates; {literal!r} is not one")
            return self.instants({"timestamp": literal}, name)[0]
        return property_value(name, literal, kind, "filter")

    @staticmethod
    def instants(literal: Any, name: str) -> tuple[str | None, str | None]:
        """(first, last) instant of a temporal literal as RFC 3339 UTC text; None for an open end."""
        def instant(text: Any, last: bool) -> str | None:
            if text == "..":
                return None
            if not isinstance(text, str):
                raise _refuse(f"{name!r}: {text!r} is not a date or timestamp")
            if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):  # a date is the whole day
                return _utc(parse_instant(f"{text}T{'23:59:59.999Z' if last else '00:00:00Z'}", "filter"))
            return _utc(parse_instant(text, "filter"))

        if isinstance(literal, str):
            literal = {"timestamp": literal}
        if not isinstance(literal, dict):
            raise _refuse(f"{name!r} needs a TIMESTAMP, DATE or INTERVAL, got {json.dumps(literal)[:80]}")
        if "timestamp" in literal:
            moment = instant(literal["timestamp"], False)
            return moment, moment
        if "date" in literal:
            return instant(literal["date"], False), instant(literal["date"], True)
        bounds = literal.get("interval")
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise _refuse(f"{name!r}: an INTERVAL has a start and an end")
        start, end = instant(bounds[0], False), instant(bounds[1], True)
        if start and end and start > end:
            raise _refuse(f"{name!r}: the interval starts after it ends")
        return start, end

    # operators ----------------------------------------------------------------------------------
    def clause(self, node: Any) -> dict[str, Any]:
        if isinstance(node, bool):
            return {"match_all": {}} if node else {"match_none": {}}
        if not isinstance(node, dict) or "op" not in node:
            raise _refuse(f"expected an operator, got {json.dumps(node)[:80]}")
        op, args = str(node["op"]).lower(), list(node.get("args") or [])
        if op in ("and", "or"):
            parts = [self.clause(arg) for arg in args]
            if op == "and":
                return {"bool": {"filter": parts}}
            return {"bool": {"should": parts, "minimum_should_match": 1}}
        if op == "not":
            if len(args) != 1:
                raise _refuse("not takes one argument")
            return {"bool": {"must_not": [self.clause(args[0])]}}
        if op in ("=", "<>"):
            return self.equality(op, args)
        if op in COMPARISONS:
            return self.comparison(op, args)
        if op == "isnull":
            target = self.field(args[0] if args else None, "isNull")
            return {"bool": {"must_not": [{"exists": {"field": target[0]}}]}}
        if op == "like":
            return self.like(args)
        if op == "between":
            return self.between(args)
        if op == "in":
            return self.within_list(args)
        if op in SPATIAL:
            return self.spatial(op, args)
        if op in TEMPORAL:
            return self.temporal(op, args)
        supported = "and, or, not, =, <>, <, <=, >, >=, isNull, like, between, in, casei, " \
                    f"{', '.join(SPATIAL)}, {', '.join(TEMPORAL)}"
        raise _refuse(f"operator {node['op']!r} is not supported here (supported: {supported})")

    def equality(self, op: str, args: list[Any]) -> dict[str, Any]:
        target, literal, _ = self.operands(op, args)
        index_field, kind, name, insensitive = target
        literal_plain, literal_casei = self.strip_casei(literal)
        value = self.value(target, literal_plain)
        if kind == "date":  # an instant, or every instant of a DATE's day
            match: dict[str, Any] = {"range": {index_field: {"gte": value,
                                                             "lte": self.value(target, literal_plain, last=True)}}}
        elif insensitive or literal_casei:
            if kind not in STRING_TYPES:
                raise _refuse(f"casei compares text; {name!r} holds {kind} values")
            match = {"term": {index_field: {"value": value, "case_insensitive": True}}}
        else:
            match = {"term": {index_field: value}}
        if op == "=":
            return match
        return {"bool": {"filter": [{"exists": {"field": index_field}}], "must_not": [match]}}

    def comparison(self, op: str, args: list[Any]) -> dict[str, Any]:
        target, literal, swapped = self.operands(op, args)
        index_field, kind, name, _ = target
        if kind == "boolean":
            raise _refuse(f"{name!r} holds true/false: compare it with = or <>")
        if swapped:  # 10 < x  ⇔  x > 10
            op = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}[op]
        return {"range": {index_field: {COMPARISONS[op]: self.value(target, literal, last=op in ("<=", ">"))}}}

    def like(self, args: list[Any]) -> dict[str, Any]:
        target, literal, swapped = self.operands("like", args)
        index_field, kind, name, insensitive = target
        pattern, pattern_casei = self.strip_casei(literal)
        if swapped or not isinstance(pattern, str):
            raise _refuse("like is property LIKE 'pattern'")
        if kind not in STRING_TYPES:
            raise _refuse(f"like matches text; {name!r} holds {kind} values")
        return {"wildcard": {index_field: {"value": like_to_wildcard(pattern),
                                           "case_insensitive": insensitive or pattern_casei}}}

    def between(self, args: list[Any]) -> dict[str, Any]:
        if len(args) == 2 and isinstance(args[1], list) and len(args[1]) == 2:
            args = [args[0], *args[1]]
        if len(args) != 3 or not self.is_property(args[0]):
            raise _refuse("between is property BETWEEN low AND high")
        target = self.field(args[0], "between")
        if target[1] not in NUMERIC_TYPES and target[1] != "date":
            raise _refuse(f"between compares numbers or dates; {target[2]!r} holds {target[1]} values")
        low, high = self.value(target, args[1]), self.value(target, args[2], last=True)
        return {"range": {target[0]: {"gte": low, "lte": high}}}

    def within_list(self, args: list[Any]) -> dict[str, Any]:
        if len(args) != 2 or not self.is_property(args[0]) or not isinstance(args[1], list) or not args[1]:
            raise _refuse("in is property IN (value, ...)")
        # one clause per value: k-NN 2.19 matches nothing for `terms` on a numeric field in a nested kNN filter
        return {"bool": {"should": [self.equality("=", [args[0], item]) for item in args[1]],
                         "minimum_should_match": 1}}

    def spatial(self, op: str, args: list[Any]) -> dict[str, Any]:
        target, literal, swapped = self.operands(op, args)
        index_field, kind, name, _ = target
        if kind != "geo_shape":
            raise _refuse(f"{op} compares geometries; {name!r} is not one (use geometry)")
        relation = SPATIAL[op]
        if swapped and relation in ("within", "contains"):  # S_WITHIN(shape, geometry) = S_CONTAINS(geometry, shape)
            relation = "contains" if relation == "within" else "within"
        if isinstance(literal, dict) and "bbox" in literal:
            try:
                shape = bbox_geometry(list(parse_bbox(literal["bbox"])))
            except QueryError as exc:
                raise _refuse(f"{op}: BBOX {exc.detail}") from None
        else:
            try:
                check_geometry(literal)
            except ValueError as exc:
                raise _refuse(f"{op}: {exc}") from None
            shape = bare_geometry(literal)
        match = {"geo_shape": {index_field: {"shape": shape, "relation": relation}}}
        if relation == "disjoint":  # an item without a geometry is no place at all, not one disjoint from shape
            return {"bool": {"filter": [{"exists": {"field": index_field}}, match]}}
        return match

    def temporal(self, op: str, args: list[Any]) -> dict[str, Any]:
        target, literal, swapped = self.operands(op, args)
        index_field, kind, name, _ = target
        if kind != "date":
            raise _refuse(f"{op} compares times; {name!r} holds {kind} values")
        if swapped and op in ("t_before", "t_after", "t_during"):
            raise _refuse(f"{op}: put the property first, e.g. {op.upper()}(datetime, INTERVAL(...))")
        start, end = self.instants(literal, name)
        exists = {"exists": {"field": index_field}}
        within = {"range": {index_field: {k: v for k, v in (("gte", start), ("lte", end)) if v}}} \
            if start or end else exists
        if op == "t_intersects":
            return within
        if op == "t_equals":
            if start != end:
                raise _refuse(f"t_equals: {name!r} holds instants; an interval never equals one")
            return within
        if op == "t_disjoint":
            return {"bool": {"filter": [exists], "must_not": [within]}}
        if op == "t_before":
            if start is None:
                return {"match_none": {}}
            return {"range": {index_field: {"lt": start}}}
        if op == "t_after":
            if end is None:
                return {"match_none": {}}
            return {"range": {index_field: {"gt": end}}}
        # t_during: strictly inside the interval
        if "interval" not in literal:
            raise _refuse("t_during needs an INTERVAL")
        return {"range": {index_field: {k: v for k, v in (("gt", start), ("lt", end)) if v}}} \
            if start or end else exists


def _utc(moment: Any) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def like_to_wildcard(pattern: str) -> str:
    """A CQL2 LIKE pattern (`%` any run, `_` one character, `\\` escapes) as a Lucene wildcard."""
    out: list[str] = []
    escaped = False
    for char in pattern:
        if escaped:
            out.append("\\" + char if char in "*?\\" else char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "%":
            out.append("*")
        elif char == "_":
            out.append("?")
        else:
            out.append("\\" + char if char in "*?" else char)
    if escaped:
        out.append("\\\\")
    return "".join(out)


def to_clause(expression: dict[str, Any], property_types: dict[str, str]) -> dict[str, Any]:
    """A parsed CQL2 filter (`parse_filter`) as one OpenSearch clause on the index's fields.

    `property_types` maps item property names to their mapped types (`Searcher.property_types`):
    a property it lacks is a QueryError naming it, a value its type cannot hold likewise.
    """
    return _Translator(property_types).clause(expression)


_JSON_TYPES = {"boolean": {"type": "boolean"}, "date": {"type": "string", "format": "date-time"}}


def queryables(property_types: dict[str, str], schema_id: str | None = None) -> dict[str, Any]:
    """The JSON Schema a STAC API serves at `/queryables`: the four core fields and every mapped
    item property with its JSON type. `additionalProperties` false: other names are refused."""
    properties: dict[str, Any] = {
        "id": {"title": "Item ID", "description": "the image's identifier", "type": "string"},
        "collection": {"title": "Collection", "type": "string"},
        "datetime": {"title": "Acquired", "type": "string", "format": "date-time"},
        # inline, not a $ref to geojson.org: portals resolve $refs in the browser, and cannot offline
        "geometry": {"title": "Footprint", "description": "a GeoJSON geometry (RFC 7946)", "type": "object",
                     "format": "geometry-any"},
    }
    for name, kind in sorted(property_types.items()):
        if name in properties or kind in ("geo_shape", "geo_point", "binary", "object", "nested", ""):
            continue
        if kind in NUMERIC_TYPES:
            schema = {"type": "integer" if kind in ("long", "integer", "short", "byte", "unsigned_long")
                      else "number"}
        else:
            schema = dict(_JSON_TYPES.get(kind, {"type": "string"}))
        properties[name] = {"title": name, **schema}
    document: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2019-09/schema",
        "type": "object",
        "title": "Queryables",
        "properties": properties,
        "additionalProperties": False,
    }
    if schema_id:
        document["$id"] = schema_id
    return document
