"""Saving a model package with any files beside it (``extras``: any names, including the package's own, paths,
``..``, empty, over-long or with a NUL; any text) writes the whole package under its final name or refuses with a
`PackageError` naming the folder, leaving nothing behind: no staging folder, no half package, and a package already
there unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st

from fedmeta.common.package.model_package import (
    MANIFEST_FILE,
    AdaptationPlan,
    Manifest,
    PackageError,
    installed_versions,
    load_package,
    save_package,
)
from tests.fuzz.strategies import (
    FUZZ,
    PACKAGE_CONFIG,
    PACKAGE_SCHEMA,
    PACKAGE_WEIGHTS,
    names_the_problem,
    scratch_folder,
)

# Its versions given: looking up the installed ones costs more than writing the package.
MANIFEST = Manifest(PACKAGE_SCHEMA, PACKAGE_CONFIG,
                    AdaptationPlan("fomaml", 5, 0.01), "factory-rows", "run-a", 3, versions=installed_versions())

_FOLDER = scratch_folder("fuzz-package-")
PARENT = Path(_FOLDER.name)
EXISTING = PARENT / "existing"
save_package(EXISTING, PACKAGE_WEIGHTS, {}, MANIFEST, {"report.txt": "the first package"})
BEFORE = {file.name: file.read_bytes() for file in EXISTING.iterdir()}

NAMES = st.sampled_from(["report.txt", "", ".", "..", "a/b", "../escape.txt", "/tmp/abs.txt", MANIFEST_FILE,
                         "weights.safetensors", "trees.json", "x\x00y", "a" * 300, "\u00fc.txt", " ", ".hidden",
                         "existing"]) | st.text(max_size=10)
TEXTS = st.sampled_from(["", "ok", "\ud800", "\x00", "a" * 5000]) | st.text(max_size=20)


@FUZZ
@given(st.dictionaries(NAMES, TEXTS, max_size=3), st.sampled_from(["new", "existing"]))
def test_a_package_is_written_whole_or_not_at_all(extras: dict[str, str], where: str) -> None:
    target = PARENT / where
    try:
        save_package(target, PACKAGE_WEIGHTS, {}, MANIFEST, extras)
    except PackageError as error:
        event("refused")
        names_the_problem(error, f"model package {str(target)!r}: ")
        assert sorted(p.name for p in PARENT.iterdir()) == ["existing"]  # no staging folder, no half package
    else:
        event("accepted")
        try:
            assert where == "new"
            assert load_package(target).manifest.run == "run-a"
            assert {name: (target / name).read_bytes() for name in extras} == {
                name: text.encode("utf-8") for name, text in extras.items()}
        finally:
            shutil.rmtree(target)
    assert {file.name: file.read_bytes() for file in EXISTING.iterdir()} == BEFORE
