"""`--shard K/N`: N machines or processes ingest one archive without overlap, each with its own state.

Every item of any source belongs to exactly one of N shards, by a stable hash of its key (the same on
every machine, Python version and run: not `hash()`, which is salted per process). A chip's key is its
scene (`rsrt:scene`), so all chips of one scene go to one shard and the scene's header is read once;
any other record's key is its image id; a `SourceProblem`'s is its item name, so N shards' quarantines
add up to one run's. A shard reads the whole source and keeps its own items: the items are not listed
twice, the work (captioning, embedding, writing) is split.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rsrt.search.errors import ConfigError
from rsrt.search.schema import ImageRecord

from .raster import SCENE_PROPERTY
from .sources.base import Source, SourceItem, SourceProblem

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard `number` of `count` (1-based, like `--shard 1/4`)."""

    number: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.number <= self.count:
            raise ConfigError(f"--shard must be K/N with 1 <= K <= N, not {self.number}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"2/4"` → Shard(2, 4); anything else is one `ConfigError` line naming `--shard`."""
        match = _SHARD.match(str(text))
        if match is None:
            raise ConfigError(f"--shard must be K/N with 1 <= K <= N (e.g. 1/4), not {text!r}")
        return cls(int(match.group(1)), int(match.group(2)))

    def owns(self, key: str) -> bool:
        """Whether the item with this key is this shard's: blake2b of the key, modulo N."""
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()  # hostile names too
        return int.from_bytes(digest, "big") % self.count == self.number - 1

    @property
    def slug(self) -> str:
        """The shard's state folder under `.rsrt/<index>/`: `shard-K-of-N`."""
        return f"shard-{self.number}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.number}/{self.count}"


def shard_key(item: SourceItem) -> str:
    """What decides an item's shard: a chip's scene, else the record's image id; a problem's item name."""
    if isinstance(item, SourceProblem):
        return f"problem:{item.item}"
    scene = (item.properties or {}).get(SCENE_PROPERTY) if isinstance(item, ImageRecord) else None
    return f"scene:{scene}" if scene else f"image:{item.image_id}"


class ShardedSource(Source):
    """Any source, reduced to the items one shard owns; counts the items left to the other shards."""

    kind = "sharded"

    def __init__(self, inner: Any, shard: Shard) -> None:
        self.inner = inner
        self.shard = shard
        self.needs_captioning = inner.needs_captioning  # type: ignore[misc]
        self.left_to_others = 0  # items of the source the other shards ingest

    def __getattr__(self, name: str) -> Any:
        """Anything else (a source's own options or resources) is the inner source's."""
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def describe(self) -> str:
        return f"{self.inner.describe()} [shard {self.shard}]"

    def count_hint(self) -> int | None:
        """None: which items are this shard's is known only by reading them."""
        return None

    def __iter__(self) -> Iterator[SourceItem]:
        self.left_to_others = 0
        for item in self.inner:  # the inner source has checked every record already
            if self.shard.owns(shard_key(item)):
                yield item
            else:
                self.left_to_others += 1

    __iter__._checks_records = True  # type: ignore[attr-defined]


def sharded(source: Any, shard: Shard | None) -> Any:
    """`source` as `shard` sees it (unchanged without a shard, or when it is sharded already)."""
    if shard is None or isinstance(source, ShardedSource):
        return source
    return ShardedSource(source, shard)


__all__ = ["Shard", "ShardedSource", "shard_key", "sharded"]
