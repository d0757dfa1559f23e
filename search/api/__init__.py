"""The HTTP API (`rsrt serve`): a STAC API for portals, on stac-fastapi. `create_app` builds it."""

import logging

# stac-fastapi builds a settings object from the environment when imported and warns that its title is
# the default one; rsrt passes its own settings (`app._Settings`), so that warning would only mislead.
logging.getLogger("stac_fastapi.types.config").setLevel(logging.ERROR)

from .app import CONFORMANCE, ApiConfig, create_app  # noqa: E402
from .items import geometry_bbox, to_collection, to_item  # noqa: E402
from .tokens import TokenCodec, query_digest  # noqa: E402

__all__ = ["CONFORMANCE", "ApiConfig", "TokenCodec", "create_app", "geometry_bbox", "query_digest", "to_collection",
           "to_item"]
