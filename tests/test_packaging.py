"""The user's layout (search/, ingest/, mappings/ at the top) installs as rsrt.*: nothing may be left out."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_python_package_is_listed():
    config = _config()
    listed = set(config["packages"])
    mapping = config["package-dir"]
    found = set()
    for package, folder in mapping.items():
        root = REPO / folder
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            found.add(".".join((package, *relative)))
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"
    assert listed - found == set(), f"listed but missing: {sorted(listed - found)}"


def test_package_data_globs_match_the_files_code_reads():
    data = _config()["package-data"]
    mapping = _config()["package-dir"]

    def matched(package: str) -> set[Path]:
        base = package
        while base not in mapping:
            base = base.rsplit(".", 1)[0]
        folder = REPO / mapping[base] / Path(*package.split(".")[len(base.split(".")):])
        return {p for pattern in data[package] for p in folder.glob(pattern)}

    mappings = matched("rsrt.mappings")
    assert REPO / "mappings" / "index-template.json" in mappings
    assert len([p for p in mappings if "search-pipelines" in p.parts]) == 2
    assert any(p.suffix == ".ndjson" for p in mappings)
    assert len(matched("rsrt.search.evaluation")) == 3  # rsitmd, ucm and sydney regression files
    assert matched("rsrt.search") == {REPO / "search" / "_node" / "lang-painless.policy",
                                      REPO / "search" / "_node" / "reindex.policy"}
