"""`POST /v1/embeddings`: the index's own encoder behind the OpenAI embeddings API shape.

This is what an ml-commons HTTP connector calls on clusters that accept only remote models
(`rsrt.search.ml_remote`), and any OpenAI-compatible client can call it too. Request
`{"input": str | [str], "model": <the index's encoder name>, "encoding_format"?: "float" | "base64"}`;
answer `{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}], "model",
"usage": {"prompt_tokens", "total_tokens"}}` (usage counts whitespace-separated words: an estimate).

rsrt adds **no authentication** to this route (nor to the rest of the API): serve it on a network only
the cluster (and trusted clients) can reach, or behind a proxy that authenticates.

(No `from __future__ import annotations`: FastAPI must resolve the request model.)
"""

import base64
from collections.abc import Callable
from typing import Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, Field

from ..errors import QueryError
from ..ml_remote import MAX_INPUTS
from ..searcher import Searcher
from .errors import ErrorBody

MAX_INPUT_CHARS = 8_000  # per text; captions are far shorter, the encoder truncates at 256 tokens anyway


class EmbeddingsRequest(BaseModel):
    input: str | list[str] = Field(description=f"a text, or up to {MAX_INPUTS} texts")
    model: str = Field(description="the index's encoder name (GET /v1/models lists it)")
    encoding_format: Literal["float", "base64"] = Field("float", description="float lists, or base64 float32")
    user: str | None = Field(None, description="accepted and ignored (OpenAI compatibility)")


def check_inputs(value: str | list[str]) -> list[str]:
    """The texts of a request, bounded; a `QueryError` naming `input` otherwise."""
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise QueryError("input", "give at least one text")
    if len(texts) > MAX_INPUTS:
        raise QueryError("input", f"{len(texts)} texts; at most {MAX_INPUTS} per request")
    for i, text in enumerate(texts):
        if not text.strip():
            raise QueryError("input", f"text {i} is empty")
        if len(text) > MAX_INPUT_CHARS:
            raise QueryError("input", f"text {i} has {len(text)} characters; at most {MAX_INPUT_CHARS}")
    return texts


def _encoded(vector: Any, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # what the openai client asks for by default: little-endian float32
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def install_embeddings_route(app: FastAPI, searcher: Callable[[], Searcher]) -> None:
    """Add `POST /v1/embeddings` (and `GET /v1/models`) to `app`; `searcher()` gives the index's Searcher."""
    responses: dict[int | str, dict[str, Any]] = {
        400: {"model": ErrorBody, "description": "bad `input`, `model` or `encoding_format`"},
        503: {"model": ErrorBody, "description": "OpenSearch or the index is unavailable"},
    }

    @app.post("/v1/embeddings", name="embeddings", tags=["embeddings"], responses=responses)
    def embeddings(body: EmbeddingsRequest) -> dict[str, Any]:
        """Embed texts with the index's own encoder (OpenAI embeddings API shape). No auth: keep it private."""
        texts = check_inputs(body.input)
        index_searcher = searcher()
        name = index_searcher.encoder_info["name"]
        if body.model != name:
            raise QueryError("model", f"{body.model!r} is not this index's encoder; use {name!r}")
        vectors = index_searcher.encoder.encode(texts)
        tokens = sum(len(text.split()) for text in texts)
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": _encoded(vector, body.encoding_format)}
                     for i, vector in enumerate(vectors)],
            "model": name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    @app.get("/v1/models", name="models", tags=["embeddings"], responses=responses)
    def models() -> dict[str, Any]:
        """The one model `/v1/embeddings` serves: the index's encoder (OpenAI models API shape)."""
        name = searcher().encoder_info["name"]
        return {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "rsrt"}]}
