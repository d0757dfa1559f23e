"""The HTTP API (`rsrt serve`): STAC-API-like item search for portals. `create_app` builds it."""

from .app import CONFORMANCE, ApiConfig, create_app
from .items import geometry_bbox, to_collection, to_item
from .tokens import TokenCodec, query_digest

__all__ = ["CONFORMANCE", "ApiConfig", "TokenCodec", "create_app", "geometry_bbox", "query_digest", "to_collection",
           "to_item"]
