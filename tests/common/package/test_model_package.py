"""The model package: written once, read back exactly, and every damaged or inconsistent package refused by name."""

from __future__ import annotations

import json
import re

import pytest
import torch

from fedmeta.common import build_model, init_inner_lrs
from fedmeta.common.data.scaling import FeatureScaling
from fedmeta.common.meta.models import ModelConfig
from fedmeta.common.package.model_package import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    AdaptationPlan,
    Manifest,
    PackageError,
    PackageSchema,
    installed_versions,
    load_package,
    save_package,
)

CONFIG = ModelConfig("mlp", (3,), 2, hidden=8, depth=1)
SCHEMA = PackageSchema(("temperature", "pressure", "speed"), "defect", "classification", ("ok", "scrap"))


def _manifest(algorithm: str = "fomaml", **changes) -> Manifest:
    values = dict(schema=SCHEMA, model=CONFIG, adaptation=AdaptationPlan(algorithm, 10, 0.01, "cross-validated"),
                  scaling_rule="factory-rows", run="run-a", round=3, metrics={"accuracy-k5": 0.8})
    return Manifest(**{**values, **changes})


def _weights() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {n: p.detach().clone() for n, p in build_model(CONFIG).named_parameters()}


def test_a_saved_package_loads_back_with_its_weights_rates_manifest_and_hash(tmp_path):
    weights = _weights()
    rates = init_inner_lrs(weights, 0.02)
    scaling = FeatureScaling.fit(torch.randn(20, 3))
    saved = save_package(tmp_path / "model", weights, rates, _manifest("metasgd", scaling=scaling))
    loaded = load_package(tmp_path / "model")
    assert loaded.manifest.to_json() == saved.manifest.to_json()
    assert loaded.manifest.versions == installed_versions()
    assert loaded.version_notes == ()
    assert len(loaded.manifest.weights_sha256) == 64
    for name, tensor in weights.items():
        assert torch.equal(loaded.weights[name], tensor)
        assert torch.equal(loaded.inner_lrs[name], rates[name])
    assert torch.equal(loaded.manifest.scaling.mean, scaling.mean)
    assert loaded.manifest.schema == SCHEMA and loaded.manifest.model == CONFIG
    assert sorted(p.name for p in (tmp_path).iterdir()) == ["model"]  # no staging folder left behind


def test_an_existing_package_is_never_overwritten(tmp_path):
    save_package(tmp_path / "model", _weights(), {}, _manifest())
    before = (tmp_path / "model" / WEIGHTS_FILE).read_bytes()
    other = {n: t + 1 for n, t in _weights().items()}
    with pytest.raises(PackageError, match="already exists"):
        save_package(tmp_path / "model", other, {}, _manifest())
    assert (tmp_path / "model" / WEIGHTS_FILE).read_bytes() == before


@pytest.mark.parametrize(("extras", "problem"), [
    ({"": "x"}, "'' cannot be written beside a package's own files"),
    ({"..": "x"}, "'..' cannot be written beside"),
    ({"x\x00y": "x"}, r"'x\\x00y' cannot be written beside"),
    ({"a" * 300: "x"}, "cannot be written: File name too long"),
    ({"report.txt": "\ud800"}, "'report.txt' must be text that UTF-8 can hold"),
])
def test_files_that_cannot_go_beside_a_package_are_refused_and_nothing_is_left(tmp_path, extras, problem):
    """Found by tests/fuzz: these were an IsADirectoryError, a ValueError, an OSError or a UnicodeEncodeError."""
    with pytest.raises(PackageError, match=problem):
        save_package(tmp_path / "model", _weights(), {}, _manifest(), extras)
    assert list(tmp_path.iterdir()) == []


def test_a_changed_weights_file_is_refused_by_its_hash(tmp_path):
    save_package(tmp_path / "model", _weights(), {}, _manifest())
    path = tmp_path / "model" / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"SHA-256.*changed or damaged"):
        load_package(tmp_path / "model")


def _edit_manifest(tmp_path, edit) -> None:
    path = tmp_path / "model" / MANIFEST_FILE
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("schema"), "lacks 'schema'"),
        (lambda d: d.update(format=99), "format 99"),
        (lambda d: d.update(colour="red"), "unknown keys"),
        (lambda d: d["schema"].update(task="ranking"), "task must be one of"),
        (lambda d: d["model"].update(hidden=16), "do not fit the mlp model config"),
        (lambda d: d["schema"].update(features=["a", "b"]), "reads 3 features but the schema lists 2"),
        (lambda d: d["adaptation"].update(recipe="guess"), "recipe must be one of"),
        # Found by tests/fuzz: each was a bare AttributeError, OverflowError or TypeError, not a PackageError.
        (lambda d: d.update(versions=None), "'versions' must be an object of texts, got None"),
        (lambda d: d.update(scaling=True), "'scaling' must be an object or null, got True"),
        (lambda d: d.update(scaling={"mean": [10**400, 0, 0], "std": [1, 1, 1], "rows": 5}),
         "scaling's 'mean' and 'std' must be lists of numbers"),
        (lambda d: d.update(target_scaling={"mean": 10**400, "std": 1.0, "rows": 5}),
         "a target scaling's mean and std must be numbers float64 can hold"),
        (lambda d: d.update(decision={"failure_class": "scrap", "failure_rate": "0.1", "adapted_rate": 0.1,
                                      "threshold": 0.5}), "a decision needs failure rates in"),
        # Found by tests/fuzz: a damaged size or depth built its model first (16 GiB of weights, or 2^31 layers).
        (lambda d: d["model"].update(hidden=2**31), r"do not fit the mlp model config: .* wrong shapes \["),
        (lambda d: d["model"].update(depth=2**31), "do not fit the mlp model config: 4 tensors, fewer than its depth "
                                                   "2147483648"),
    ],
)
def test_an_inconsistent_manifest_is_refused_naming_the_problem(tmp_path, edit, message):
    save_package(tmp_path / "model", _weights(), {}, _manifest())
    _edit_manifest(tmp_path, edit)
    with pytest.raises(PackageError, match=message):
        load_package(tmp_path / "model")


def test_a_version_difference_is_named_not_refused(tmp_path):
    save_package(tmp_path / "model", _weights(), {}, _manifest())
    _edit_manifest(tmp_path, lambda d: d["versions"].update(torch="1.0.0"))
    loaded = load_package(tmp_path / "model")
    assert loaded.version_notes == (f"torch: package built with 1.0.0, this machine has {torch.__version__}",)


def test_missing_files_and_bad_weights_are_refused(tmp_path):
    with pytest.raises(PackageError, match="does not exist"):
        load_package(tmp_path / "nowhere")
    save_package(tmp_path / "model", _weights(), {}, _manifest())
    (tmp_path / "model" / WEIGHTS_FILE).unlink()
    with pytest.raises(PackageError, match=re.escape(f"has no {WEIGHTS_FILE}")):
        load_package(tmp_path / "model")
    broken = {**_weights(), "head.bias": torch.tensor([float("nan"), 0.0])}
    with pytest.raises(PackageError, match=re.escape("non-finite values in ['head.bias']")):
        save_package(tmp_path / "nan", broken, {}, _manifest())
    with pytest.raises(PackageError, match="learned step size"):
        save_package(tmp_path / "rates", _weights(), {}, _manifest("metasgd"))
    assert not (tmp_path / "nan").exists() and not (tmp_path / "rates").exists()


def test_feature_scaling_standardises_with_the_rows_it_was_fitted_on():
    x = torch.tensor([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    scaling = FeatureScaling.fit(x)
    scaled = scaling.apply(x)
    assert torch.allclose(scaled[:, 0], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(scaled[:, 1], torch.zeros(3))  # a constant feature is centred, never divided by 0
    assert scaling.rows == 3
    with pytest.raises(ValueError, match="NaN"):
        FeatureScaling.fit(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="rows of 2 features"):
        scaling.apply(torch.zeros(4, 3))
