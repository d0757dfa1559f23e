"""What a local OpenSearch node is made of, as Maven coordinates, per supported version.

Route: the official `integ-test-zip` distribution (real `bin/opensearch`, real bootstrap, security
manager and plugin class loaders) with the modules rsrt needs laid out from their Maven Central jars,
then the k-NN and neural-search plugin zips installed with the distribution's own `opensearch-plugin`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources


@dataclass(frozen=True)
class ModuleSpec:
    """A module folder: its jars (Maven coordinates) and the descriptor the build would have written."""

    name: str
    classname: str
    jars: tuple[str, ...]
    description: str
    extended_plugins: tuple[str, ...] = ()
    policy: str | None = None  # a resource file in this package


@dataclass(frozen=True)
class Distribution:
    """One OpenSearch version and the exact artifacts that make an rsrt node of it."""

    version: str
    core_zip: str
    modules: tuple[ModuleSpec, ...]
    plugin_zips: dict[str, str] = field(default_factory=dict)  # plugin name -> coordinate

    @property
    def folder(self) -> str:
        return f"opensearch-{self.version}"


def _distribution_2_19(patch: int) -> Distribution:
    v = f"2.19.{patch}"
    p = "org.opensearch.plugin"
    asm = tuple(f"org.ow2.asm:{a}:9.7" for a in ("asm", "asm-util", "asm-tree", "asm-commons", "asm-analysis"))
    return Distribution(
        version=v,
        core_zip=f"org.opensearch.distribution.integ-test-zip:opensearch:{v}:zip",
        modules=(
            ModuleSpec(
                "lang-painless",
                "org.opensearch.painless.PainlessPlugin",
                (f"{p}:lang-painless:{v}", f"{p}:opensearch-scripting-painless-spi:{v}",
                 "org.antlr:antlr4-runtime:4.13.1", *asm),
                "An easy, safe and fast scripting language for OpenSearch",
                policy="lang-painless.policy",
            ),
            ModuleSpec(
                "analysis-common",
                "org.opensearch.analysis.common.CommonAnalysisPlugin",
                (f"{p}:analysis-common:{v}",),
                "Adds common analysis (language analyzers such as english)",
                extended_plugins=("lang-painless",),
            ),
            ModuleSpec(
                "mapper-extras",
                "org.opensearch.index.mapper.MapperExtrasPlugin",
                (f"{p}:mapper-extras-client:{v}",),
                "Adds advanced field mappers",
            ),
            ModuleSpec(
                "geo",
                "org.opensearch.geo.GeoModulePlugin",
                (f"{p}:geo:{v}",),
                "Geo aggregations on geo_shape and geo_point fields",
            ),
            ModuleSpec(
                "ingest-common",
                "org.opensearch.ingest.common.IngestCommonPlugin",
                (f"{p}:ingest-common:{v}", f"org.opensearch:opensearch-grok:{v}",
                 f"org.opensearch:opensearch-dissect:{v}", "org.jruby.joni:joni:2.2.1",
                 "org.jruby.jcodings:jcodings:1.0.61"),
                "Module for ingest processors that do not require additional security permissions",
                extended_plugins=("lang-painless",),
            ),
        ),
        plugin_zips={
            "opensearch-knn": f"{p}:opensearch-knn:{v}.0:zip",
            "opensearch-neural-search": f"{p}:neural-search:{v}.0:zip",
        },
    )


DISTRIBUTIONS: dict[str, Distribution] = {d.version: d for d in (_distribution_2_19(1),)}
DEFAULT_VERSION = "2.19.1"


def policy_text(resource: str) -> str:
    return resources.files(__package__).joinpath(resource).read_text(encoding="utf-8")
