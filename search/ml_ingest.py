"""Embedding on write by the cluster: the index's ingest pipeline (ml-commons + neural-search).

A caption document written without vectors — by a portal, Logstash, Dev Tools or
`rsrt ingest --embed cluster` — goes through `<alias>-embed`:

1. a painless `script` shapes each variant as `Variant.from_mapping` / `to_document` would (text
   fields stripped of what Python's `str.strip()` strips, feature lists joined with "; ", empty
   fields and text-less variants dropped, `n`, `variant_count` and `summary` filled when absent),
   lists each variant's `Variant.labelled_text()` in a flat temporary list (variants that hold a
   vector already get none; no empty text is ever sent to the model), and stashes the rest of the
   document as one JSON string;
2. `text_embedding` embeds that list (field map `{_rsrt_texts: _rsrt_vectors}`);
3. `json` puts the stashed document back; a last script sets each variant's `embedding` and
   removes the temporary fields (the mapping is `dynamic: strict`).

Why not `text_embedding` with a nested field map on `variants`: in neural-search 2.19.1 the
processor rebuilds the whole source (its dotted-key unflattening), and every list of objects comes
out with one key per object and every list of lists with its inner lists reversed — the variants
lose their texts and a GeoJSON polygon its coordinate order (opensearch-project/neural-search#1244;
`tests/test_ml_ingest.py` checks it still happens, so this detour can go when it is fixed). Strings
and lists of strings survive, hence the stash.

The pipeline is also the index's `index.default_pipeline`, so any writer gets vectors without
knowing its name; rsrt's own client-embedded bulk requests skip it with `pipeline=_none`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import opensearchpy
from opensearchpy import OpenSearch

from . import fields
from .errors import RsrtError, from_opensearch
from .schema import VARIANT_FIELDS

NO_PIPELINE = "_none"  # the bulk `pipeline` value that skips the index's default pipeline
# Temporary top-level fields, gone before the document is indexed (the mapping is strict).
_TEMPORARY = {"stash": "_rsrt_stash", "texts": "_rsrt_texts", "slots": "_rsrt_slots", "vectors": "_rsrt_vectors"}
# What an ingest script's ctx holds besides the source: never stashed.
METADATA_KEYS = ("_index", "_id", "_routing", "_version", "_version_type", "_if_seq_no", "_if_primary_term")
# What Python's str.strip() removes (every c with c.isspace()); Java's trim()/strip() differ.
PYTHON_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                     "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
INFERENCE_BATCH = 32  # texts per model call when a bulk request brings many documents

_PREPARE = r"""
String strip(String s, String ws) {
  int a = 0; int b = s.length();
  while (a < b && ws.indexOf(s.substring(a, a + 1)) >= 0) { a++; }
  while (b > a && ws.indexOf(s.substring(b - 1, b)) >= 0) { b--; }
  return s.substring(a, b);
}
String quote(String s) {
  StringBuilder b = new StringBuilder();
  b.append('"');
  for (int i = 0; i < s.length(); ++i) {
    char c = s.charAt(i);
    if (c == (char) '"') { b.append('\\"'); }
    else if (c == (char) '\\') { b.append('\\\\'); }
    else if (c < (char) 32) {
      String h = Integer.toHexString((int) c);
      b.append('\\u');
      for (int k = h.length(); k < 4; ++k) { b.append('0'); }
      b.append(h);
    } else { b.append(String.valueOf(c)); }
  }
  b.append('"');
  return b.toString();
}
String json(def o) {
  if (o == null) { return 'null'; }
  if (o instanceof String) { return quote((String) o); }
  if (o instanceof Boolean || o instanceof Number) { return String.valueOf(o); }
  if (o instanceof Map) {
    StringBuilder b = new StringBuilder();
    b.append('{');
    for (def e : o.entrySet()) {
      if (b.length() > 1) { b.append(','); }
      b.append(quote(String.valueOf(e.getKey()))).append(':').append(json(e.getValue()));
    }
    return b.append('}').toString();
  }
  if (o instanceof List) {
    StringBuilder b = new StringBuilder();
    b.append('[');
    for (def item : o) {
      if (b.length() > 1) { b.append(','); }
      b.append(json(item));
    }
    return b.append(']').toString();
  }
  return quote(String.valueOf(o));
}
List texts = [];
List slots = [];
def variants = ctx[params.variants];
if (variants != null) {
  if (variants instanceof Map) { variants = [variants]; }
  if (!(variants instanceof List)) {
    throw new IllegalArgumentException('[' + params.variants + '] must be a list of objects');
  }
  List kept = [];
  for (def v : variants) {
    if (!(v instanceof Map)) {
      throw new IllegalArgumentException('each entry of [' + params.variants + '] must be an object');
    }
    Map text = [:];
    for (String key : params.fields) {
      def raw = v.get(key);
      if (raw == null) { raw = ''; }
      if (raw instanceof List) {
        StringBuilder joined = new StringBuilder();
        for (def item : raw) {
          if (joined.length() > 0) { joined.append('; '); }
          joined.append(String.valueOf(item));
        }
        raw = joined.toString();
      }
      if (!(raw instanceof String)) {
        throw new IllegalArgumentException('variant field [' + key + '] must be text');
      }
      String value = strip((String) raw, params.ws);
      if (value.isEmpty()) { v.remove(key); } else { v.put(key, value); }
      text.put(key, value);
    }
    String one = text.get('one_sentence'); String feature = text.get('feature'); String caption = text.get('caption');
    List parts = [];
    if (!one.isEmpty()) { parts.add('Summary: ' + one); }
    if (!feature.isEmpty()) { parts.add('Features: ' + feature); }
    if (!caption.isEmpty()) { parts.add(one.isEmpty() && feature.isEmpty() ? caption : 'Caption: ' + caption); }
    if (parts.isEmpty()) { continue; }
    if (!v.containsKey(params.position)) { v.put(params.position, kept.size()); }
    if (!v.containsKey(params.embedding)) { texts.add(String.join(params.newline, parts)); slots.add(kept.size()); }
    kept.add(v);
  }
  ctx[params.variants] = kept;
  ctx[params.count] = kept.size();
  if (!kept.isEmpty() && !ctx.containsKey(params.summary)) {
    def first = kept.get(0);
    def summary = first.containsKey('one_sentence') ? first.one_sentence : first.get('caption');
    ctx[params.summary] = summary == null ? '' : summary;
  }
}
Map stash = [:];
for (String key : new ArrayList(ctx.keySet())) {
  if (!params.metadata.contains(key)) { stash.put(key, ctx.remove(key)); }
}
ctx[params.stash] = json(stash);
ctx[params.texts] = texts;
ctx[params.slots] = slots;
"""

_ATTACH = r"""
def vectors = ctx.remove(params.vectors);
def slots = ctx.remove(params.slots);
ctx.remove(params.texts);
ctx.remove(params.stash);
int expected = slots == null ? 0 : slots.size();
int got = vectors == null ? 0 : vectors.size();
if (got != expected) {
  throw new IllegalStateException('the model returned ' + got + ' vectors for ' + expected + ' variant texts');
}
for (int i = 0; i < got; ++i) {
  ctx[params.variants].get(slots.get(i)).put(params.embedding, vectors.get(i).get('knn'));
}
"""


def _params() -> dict[str, Any]:
    return {"variants": fields.VARIANTS, "fields": list(VARIANT_FIELDS), "ws": PYTHON_WHITESPACE, "newline": "\n",
            "position": fields.VARIANT_POSITION, "embedding": fields.EMBEDDING, "count": fields.VARIANT_COUNT,
            "summary": fields.SUMMARY, "metadata": list(METADATA_KEYS), **_TEMPORARY}


def prepare_processor() -> dict[str, Any]:
    """The script that shapes the variants, lists their labelled texts and stashes the document as JSON."""
    return {"script": {"tag": "rsrt-labelled-text", "lang": "painless", "source": _PREPARE.strip(),
                       "params": _params()}}


def attach_processor() -> dict[str, Any]:
    """The script that puts each vector on its variant and removes the temporary fields."""
    return {"script": {"tag": "rsrt-attach-vectors", "lang": "painless", "source": _ATTACH.strip(),
                       "params": {"variants": fields.VARIANTS, "embedding": fields.EMBEDDING, **_TEMPORARY}}}


def embedding_pipeline_body(model_id: str) -> dict[str, Any]:
    """prepare (script) → text_embedding (a flat list of texts) → json (restore) → attach (script)."""
    return {
        "description": f"rsrt: embed each caption variant's labelled text with model {model_id}",
        "processors": [
            prepare_processor(),
            {"text_embedding": {"tag": "rsrt-embed", "model_id": model_id, "batch_size": INFERENCE_BATCH,
                                "field_map": {_TEMPORARY["texts"]: _TEMPORARY["vectors"]}}},
            {"json": {"tag": "rsrt-restore", "field": _TEMPORARY["stash"], "add_to_root": True}},
            attach_processor(),
        ],
    }


def pipeline_name(alias: str) -> str:
    return f"{alias}-embed"


def put_embedding_pipeline(client: OpenSearch, alias: str, model_id: str, *, default: bool = True) -> str:
    """Install (or update) `<alias>-embed` for `model_id`; with `default`, make it the
    `index.default_pipeline` of every index behind `alias`. Idempotent: returns the name."""
    name = pipeline_name(alias)
    body = embedding_pipeline_body(model_id)
    try:
        try:
            current = client.ingest.get_pipeline(id=name).get(name)
        except opensearchpy.NotFoundError:
            current = None
        if current != body:
            client.ingest.put_pipeline(id=name, body=body)
        if default:  # on the alias: every index behind it
            settings = client.indices.get_settings(index=alias, params={"flat_settings": "true"})
            if any(s["settings"].get("index.default_pipeline") != name for s in settings.values()):
                client.indices.put_settings(index=alias, body={"index": {"default_pipeline": name}})
    except opensearchpy.TransportError as exc:
        raise from_opensearch(exc, index=alias) from None
    return name


def cluster_pipeline(client: OpenSearch, alias: str) -> str:
    """For `rsrt ingest --embed cluster`: the index's model, deployed, and its embedding pipeline's name."""
    from .errors import ConfigError, IndexNotFound
    from .ml import ensure_deployed, has_ml_commons, index_cluster_model

    if not has_ml_commons(client):
        raise ConfigError("the cluster has no ml-commons plugin: it cannot embed (use --embed client)")
    missing = ConfigError(f"index {alias} has no model in the cluster; run `rsrt model deploy --index {alias}` first")
    try:
        model = index_cluster_model(client, alias)
    except IndexNotFound:
        raise missing from None
    if model is None:
        raise missing
    ensure_deployed(client, model, index=alias)
    return put_embedding_pipeline(client, alias, model.model_id)


def install_quietly(client: OpenSearch, alias: str, model_id: str, warn: Callable[[str], None]) -> str | None:
    """The ingest hook after a model deploy: the embedding pipeline as the index's default; a failure is
    one warning (rsrt's own writes carry their vectors)."""
    try:
        return put_embedding_pipeline(client, alias, model_id)
    except RsrtError as exc:
        warn(f"warning: no embedding ingest pipeline for {alias!r} ({exc}); other writers must send vectors")
        return None


def simulate(client: OpenSearch, body: dict[str, Any], documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run `documents` through a pipeline `body` (`_ingest/pipeline/_simulate`); their `_source`s or errors."""
    try:
        answer = client.ingest.simulate(body={"pipeline": body, "docs": [{"_source": d} for d in documents]})
    except opensearchpy.TransportError as exc:
        raise from_opensearch(exc) from None
    return [d["doc"]["_source"] if "doc" in d else {"error": d.get("error")} for d in answer["docs"]]


__all__ = ["NO_PIPELINE", "cluster_pipeline", "embedding_pipeline_body", "install_quietly", "pipeline_name",
           "put_embedding_pipeline", "simulate"]
