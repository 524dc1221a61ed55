"""The documentation: the site builds with warnings as errors (a broken link, a missing page or an unknown
anchor fails it), README stays one screen, and every example in README and the site is run by a test or
says why it is not. The examples this file runs are read from the pages themselves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedmeta.client.rounds.policy import load_policy
from fedmeta.common import load_certificate
from fedmeta.common.data.connector import DataSchema
from fedmeta.common.security.credentials import certificate_names
from tests.support.cli import run_fedmeta
from tests.support.docs import PAGES, ROOT, example, examples

_MARKER = re.compile(r"<!-- (?:run by (?P<runners>[^:]+?)|not run: (?P<reason>.+?)) -->")


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], capture_output=True, text=True, timeout=300, cwd=config.parent)


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    built = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "fedmeta server" in cli and "--expose-control-api" in cli  # generated from the commands
    settings = (tmp_path / "site" / "reference" / "run-settings" / "index.html").read_text(encoding="utf-8")
    assert "wait-for-factories" in settings and "dp-noise-multiplier" in settings


def test_a_broken_link_fails_the_build(tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    page = copy / "docs" / "index.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [the missing page](missing.md).\n", encoding="utf-8")
    built = _build(copy / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0 and "missing.md" in built.stderr


def test_readme_is_one_screen_with_a_link_per_audience():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    for page in ("docs/factory-operator.md", "docs/central-team.md", "docs/researcher.md"):
        assert f"]({page})" in readme


def test_every_example_is_run_by_a_test_or_says_why_not():
    unmarked, missing = [], []
    for page in PAGES:
        for language, above, code in examples(page):
            if language == "text":  # a diagram, not an example
                continue
            marker = _MARKER.search(above)
            if marker is None:
                unmarked.append(f"{page.relative_to(ROOT)}: {language} block {code.splitlines()[0][:60]!r}")
                continue
            for runner in (marker["runners"] or "").split(","):
                runner = runner.strip()
                if runner and not (ROOT / runner).is_file():
                    missing.append(f"{page.relative_to(ROOT)}: {runner}")
                elif runner.endswith(".py") and page.name not in (ROOT / runner).read_text(encoding="utf-8"):
                    missing.append(f"{page.relative_to(ROOT)}: {runner} does not read {page.name}")
    assert unmarked == [] and missing == []


def test_the_certificate_example_runs(tmp_path, monkeypatch):
    (command,) = example("docs/central-team.md", "bash")
    monkeypatch.chdir(tmp_path)
    code, output = run_fedmeta(*command.split()[1:])
    assert code == 0, output
    names = certificate_names(load_certificate(tmp_path / "certs" / "server.crt"))
    assert names == ["server.plant.example", "10.0.0.5", "127.0.0.1"]
    assert (tmp_path / "certs" / "plant-a.pub").is_file() and (tmp_path / "certs" / "plant-b").is_file()


def test_the_schema_and_policy_examples_load(tmp_path):
    (schema,) = example("docs/factory-operator.md", "json")
    loaded = DataSchema.from_mapping(json.loads(schema))
    assert loaded.features == ("temperature", "pressure", "speed") and loaded.delimiter == ";"
    (policy,) = example("docs/security.md", "json")
    (tmp_path / "policy.json").write_text(policy, encoding="utf-8")
    assert load_policy(str(tmp_path / "policy.json")).max_epsilon == 8.0


def test_the_core_example_runs():
    (code,) = example("docs/researcher.md", "python")
    rows = torch.randn(40, 6)
    names: dict[str, object] = {"x": rows, "y": rows @ torch.ones(6)}
    exec(code, names)
    assert set(names["delta"]) == {name for name, _ in names["model"].named_parameters()}
    assert any(value.abs().sum() > 0 for value in names["delta"].values())


@pytest.mark.parametrize("page", ["README.md", "docs/index.md"])
def test_the_results_table_names_where_trees_win(page):
    text = (ROOT / page).read_text(encoding="utf-8")
    assert "trees" in text and "still ahead" in text


def test_every_file_the_pages_name_exists():
    """A page that names a module or a test names one that is there (files move; the pages must follow)."""
    path = re.compile(r"\b((?:common|client|server|simulations|tests|docker)/[\w/.-]+\.(?:py|yaml|txt))\b")
    named = {match for page in PAGES for match in path.findall(page.read_text(encoding="utf-8"))}
    assert named and sorted(name for name in named if not (ROOT / name).is_file()) == []
