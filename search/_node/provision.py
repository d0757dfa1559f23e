"""Where a local node's artifacts come from: the rsrt home, a JDK, and the distribution assembled once.

Maven resolves the artifacts named in `rsrt.search._node`; we lay out the distribution the way its
build would (modules with descriptors and policies, plugins installed with `opensearch-plugin`) and
cache it under the rsrt home. Running nodes from it is `rsrt.search.node`'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape

from ..errors import ConfigError, NodeError
from . import DEFAULT_VERSION, DISTRIBUTIONS, Distribution, policy_text, with_security

ENV_HOME = "RSRT_HOME"
READY_MARKER = ".rsrt-ready"

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def default_home() -> Path:
    """Where artifacts and node data live: RSRT_HOME, else the user's cache dir.

    As root the user cache is under /root, which the unprivileged node user cannot traverse, so
    root gets /var/cache/rsrt instead.
    """
    if os.environ.get(ENV_HOME):
        return Path(os.environ[ENV_HOME]).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/cache/rsrt")
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("rsrt"))


def find_java_home() -> Path:
    """OPENSEARCH_JAVA_HOME, JAVA_HOME, or the JDK behind `java` on PATH; it must be 11 or newer."""
    for var in ("OPENSEARCH_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(var):
            home = Path(os.environ[var])
            if (home / "bin" / "java").exists():
                return home
            raise NodeError(f"{var}={home} has no bin/java")
    java = shutil.which("java")
    if not java:
        raise NodeError("no Java found: install a JDK 17 (OpenSearch 2.19 runs on 11–21) or set JAVA_HOME")
    home = Path(java).resolve().parent.parent
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    first = out.splitlines()[0] if out else ""
    try:
        major = int(first.split('"')[1].split(".")[0])
    except (IndexError, ValueError):
        major = 0
    if major and major < 11:
        raise NodeError(f"Java {major} at {home} is too old; OpenSearch 2.19 needs Java 11 to 21")
    return home


def _pom(dist: Distribution, stage: Path) -> str:
    items = []

    def item(coordinate: str, out: Path) -> None:
        group, artifact, version, *rest = coordinate.split(":")
        kind = rest[0] if rest else "jar"
        classifier = f"<classifier>{escape(rest[1])}</classifier>" if len(rest) > 1 else ""
        items.append(
            "<artifactItem>"
            f"<groupId>{escape(group)}</groupId><artifactId>{escape(artifact)}</artifactId>"
            f"<version>{escape(version)}</version><type>{escape(kind)}</type>{classifier}"
            f"<outputDirectory>{escape(str(out))}</outputDirectory>"
            "</artifactItem>"
        )

    item(dist.core_zip, stage / "core")
    for module in dist.modules:
        for jar in module.jars:
            item(jar, stage / "modules" / module.name)
    for coordinate in dist.plugin_zips.values():
        item(coordinate, stage / "plugins")
    for number, native in enumerate(dist.natives):
        item(native.coordinate, stage / "natives" / str(number))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>rsrt.local</groupId><artifactId>opensearch-node</artifactId><version>{dist.version}</version>
  <packaging>pom</packaging>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId>
    <version>3.8.1</version>
    <executions><execution><id>fetch</id><phase>package</phase><goals><goal>copy</goal></goals>
      <configuration><artifactItems>{"".join(items)}</artifactItems></configuration>
    </execution></executions>
  </plugin></plugins></build>
</project>
"""


def _descriptor(dist: Distribution, module) -> str:
    return "\n".join(
        [
            f"description={module.description}",
            f"version={dist.version}",
            f"name={module.name}",
            f"classname={module.classname}",
            "java.version=11",
            f"opensearch.version={dist.version}",
            f"extended.plugins={','.join(module.extended_plugins)}",
            "has.native.controller=false",
            "",
        ]
    )


def _install_order(zips: dict[str, Path]) -> list[str]:
    """Plugin names so that each comes after the plugins it extends (its descriptor's `extended.plugins`)."""
    needs: dict[str, set[str]] = {}
    for name, path in zips.items():
        with zipfile.ZipFile(path) as archive:
            text = archive.read("plugin-descriptor.properties").decode("utf-8")
        values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
        needs[name] = {p.strip() for p in values.get("extended.plugins", "").split(",") if p.strip() in zips}
    order: list[str] = []
    while needs:
        ready = [name for name, deps in needs.items() if deps <= set(order)]
        if not ready:
            raise NodeError(f"plugins extend each other in a cycle: {sorted(needs)}")
        order += ready
        for name in ready:
            del needs[name]
    return order


def _unpack_natives(dist: Distribution, stage: Path, built: Path) -> None:
    """Every file under a NativeSpec's prefix in its jar, flat into the distribution's folder."""
    for number, native in enumerate(dist.natives):
        folder = built / native.folder
        folder.mkdir(parents=True, exist_ok=True)
        jar = next((stage / "natives" / str(number)).glob("*.jar"))
        with zipfile.ZipFile(jar) as archive:
            for info in archive.infolist():
                if info.filename.startswith(native.prefix) and not info.is_dir():
                    with archive.open(info) as source, (folder / Path(info.filename).name).open("wb") as target:
                        shutil.copyfileobj(source, target, 1 << 20)


def fingerprint(dist: Distribution) -> str:
    """Short hash of everything that goes into a distribution: a changed artifact set is a new folder.

    A new folder rather than a rebuild in place, so nodes still running from an older one are not
    pulled from under their feet.
    """
    policies = sorted({m.policy for m in dist.modules if m.policy})
    text = repr(dist) + "".join(policy_text(p) for p in policies)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def _distribution(version: str, secure: bool) -> Distribution | None:
    dist = DISTRIBUTIONS.get(version)
    return with_security(dist) if dist and secure else dist


def dist_dir(home: Path, version: str = DEFAULT_VERSION, secure: bool = False) -> Path:
    dist = _distribution(version, secure)
    suffix = f"-{fingerprint(dist)}" if dist else ""
    return home / "dist" / f"opensearch-{version}{suffix}"


def provision(home: Path | None = None, version: str = DEFAULT_VERSION, log: Log = _quiet,
              secure: bool = False) -> Path:
    """Assemble the distribution (with the security plugin when `secure`) once; later calls return it at once."""
    dist = _distribution(version, secure)
    if dist is None:
        raise ConfigError(f"OpenSearch {version} is not supported; choose one of {', '.join(DISTRIBUTIONS)}")
    home = home or default_home()
    target = dist_dir(home, version, secure)
    if (target / READY_MARKER).exists():
        return target
    mvn = shutil.which("mvn")
    if not mvn:
        raise NodeError("Maven (`mvn`) is needed once to fetch OpenSearch from Maven Central; install it")
    java_home = find_java_home()
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o755)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rsrt-provision-", dir=home) as tmp:
        stage = Path(tmp)
        (stage / "pom.xml").write_text(_pom(dist, stage), encoding="utf-8")
        log(f"fetching OpenSearch {version}, its modules and plugins with Maven (once)…")
        proc = subprocess.run(
            [mvn, "-B", "-q", "-f", str(stage / "pom.xml"), "package"],
            capture_output=True, text=True, env={**os.environ, "JAVA_HOME": str(java_home)},
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise NodeError(f"Maven could not fetch the OpenSearch artifacts:\n{tail}")
        core_zip = next((stage / "core").glob("*.zip"))
        with zipfile.ZipFile(core_zip) as archive:
            archive.extractall(stage / "unpacked")
        built = stage / "unpacked" / dist.folder
        for path in (built / "bin").iterdir():
            path.chmod(0o755)
        for module in dist.modules:
            folder = built / "modules" / module.name
            folder.mkdir(parents=True, exist_ok=True)
            for jar in (stage / "modules" / module.name).glob("*.jar"):
                shutil.copy2(jar, folder / jar.name)
            (folder / "plugin-descriptor.properties").write_text(_descriptor(dist, module), encoding="utf-8")
            if module.policy:
                (folder / "plugin-security.policy").write_text(policy_text(module.policy), encoding="utf-8")
        env = {**os.environ, "OPENSEARCH_JAVA_HOME": str(java_home), "OPENSEARCH_PATH_CONF": str(built / "config")}
        _unpack_natives(dist, stage, built)
        zips = {name: stage / "plugins" / ("-".join(coordinate.split(":")[1:3]) + ".zip")
                for name, coordinate in dist.plugin_zips.items()}
        for name in _install_order(zips):
            zip_path = zips[name]
            log(f"installing plugin {name} ({zip_path.name})…")
            proc = subprocess.run(
                [str(built / "bin" / "opensearch-plugin"), "install", "--batch", zip_path.as_uri()],
                capture_output=True, text=True, env=env,
            )
            if proc.returncode != 0:
                raise NodeError(f"installing plugin {name} failed: {(proc.stdout + proc.stderr).strip()[-800:]}")
        (built / READY_MARKER).write_text(json.dumps({"version": version, "seconds": time.monotonic() - t0}))
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(built), str(target))
    for path in [target, *target.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    log(f"OpenSearch {version} ready in {target} ({time.monotonic() - t0:.0f} s)")
    return target
