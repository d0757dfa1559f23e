"""What a local OpenSearch node is made of, as Maven coordinates, per supported version.

Route: the official `integ-test-zip` distribution (real `bin/opensearch`, real bootstrap, security
manager and plugin class loaders) with the modules rsrt needs laid out from their Maven Central jars,
then the k-NN, neural-search, job-scheduler and ml-commons plugin zips installed with the
distribution's own `opensearch-plugin` (in `extended.plugins` order), and the native libraries
ml-commons' DJL would otherwise download at model deploy (libtorch, its JNI) unpacked from their
Maven Central jars.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
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
class NativeSpec:
    """Native files taken out of a Maven jar: every file under `prefix` goes flat into `folder`."""

    coordinate: str  # group:artifact:version[:type[:classifier]]
    prefix: str
    folder: str  # relative to the distribution


@dataclass(frozen=True)
class MlRuntime:
    """How ml-commons' DJL finds libtorch offline (see `rsrt.search.node` for the jvm options).

    ml-commons 2.19.1 sets PYTORCH_VERSION=1.13.1 itself at deploy; with PYTORCH_LIBRARY_PATH set,
    DJL takes libtorch from that folder and looks for its JNI library in the engine cache as
    `pytorch/<PYTORCH_VERSION>-<PYTORCH_FLAVOR>-<classifier>/<djl version>-libdjl_torch.so`, and
    downloads it when it is not there. So each node's engine cache is seeded with that file.
    """

    libtorch: str  # folder (relative to the distribution) holding libtorch.so
    jni: str  # folder holding libdjl_torch.so
    pytorch_version: str  # what ml-commons pins (System.setProperty at deploy)
    djl_version: str  # the DJL api bundled in the ml plugin
    flavor: str = "cpu"  # libtorch from pytorch-native-cpu is the cxx11 ABI build
    classifier: str = "linux-x86_64"

    @property
    def jni_cache_path(self) -> str:
        """The JNI library's path inside DJL's engine cache dir."""
        return f"pytorch/{self.pytorch_version}-{self.flavor}-{self.classifier}/{self.djl_version}-libdjl_torch.so"


@dataclass(frozen=True)
class Distribution:
    """One OpenSearch version and the exact artifacts that make an rsrt node of it."""

    version: str
    core_zip: str
    modules: tuple[ModuleSpec, ...]
    plugin_zips: dict[str, str] = field(default_factory=dict)  # plugin name -> coordinate
    natives: tuple[NativeSpec, ...] = ()
    ml_runtime: MlRuntime | None = None

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
            ModuleSpec(
                # delete-by-query (ml-commons deletes a model's chunks with it), reindex, update-by-query
                "reindex",
                "org.opensearch.index.reindex.ReindexPlugin",
                (f"{p}:reindex-client:{v}", f"org.opensearch.client:opensearch-rest-client:{v}",
                 f"org.opensearch:opensearch-ssl-config:{v}", "org.apache.httpcomponents:httpclient:4.5.14",
                 "org.apache.httpcomponents:httpcore:4.4.16", "org.apache.httpcomponents:httpasyncclient:4.1.5",
                 "org.apache.httpcomponents:httpcore-nio:4.4.16", "commons-codec:commons-codec:1.16.1",
                 "commons-logging:commons-logging:1.2"),  # reactor-core, reactive-streams: in lib/ already
                "The Reindex module adds APIs to reindex from one index to another or update documents in place",
                policy="reindex.policy",
            ),
        ),
        plugin_zips={  # installed in `extended.plugins` order whatever the order here
            "opensearch-knn": f"{p}:opensearch-knn:{v}.0:zip",
            "opensearch-neural-search": f"{p}:neural-search:{v}.0:zip",
            "opensearch-job-scheduler": f"{p}:opensearch-job-scheduler:{v}.0:zip",
            "opensearch-ml": f"{p}:opensearch-ml-plugin:{v}.0:zip",
        },
        natives=(
            NativeSpec("ai.djl.pytorch:pytorch-native-cpu:2.5.1:jar:linux-x86_64", "pytorch/cpu/linux-x86_64/",
                       "ml-native/libtorch"),
            NativeSpec("ai.djl.pytorch:pytorch-jni:2.5.1-0.32.0", "jnilib/linux-x86_64/cpu/", "ml-native/jni"),
        ),
        ml_runtime=MlRuntime("ml-native/libtorch", "ml-native/jni", pytorch_version="1.13.1", djl_version="0.31.1"),
    )


DISTRIBUTIONS: dict[str, Distribution] = {d.version: d for d in (_distribution_2_19(1),)}
DEFAULT_VERSION = "2.19.1"


def with_security(dist: Distribution) -> Distribution:
    """The same distribution plus the security plugin: for `--secure` nodes only.

    A variant rather than a plugin in every distribution: plain nodes keep exactly their artifacts
    (same fingerprint, same folder, same plugin list and start time); the secure variant is its own
    folder (its artifact list hashes differently), provisioned on the first `--secure` start.
    """
    coordinate = f"org.opensearch.plugin:opensearch-security:{dist.version}.0:zip"
    return replace(dist, plugin_zips={**dist.plugin_zips, "opensearch-security": coordinate})


def policy_text(resource: str) -> str:
    return resources.files(__package__).joinpath(resource).read_text(encoding="utf-8")
