"""Tests for `common.data.synthetic`: determinism, sizes, held-out split, physics and validation.

The heterogeneity tests are the point of the module: a family is only useful for
meta-learning if one model pooled over its factories fits a new factory badly while the
factory's own data, read through the shared structure, fits it well.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedmeta.common import (
    FAMILY_KINDS,
    FAULT_CLASSES,
    MIN_CLASS_SAMPLES,
    ClassificationTaskSampler,
    FactoryFamily,
    FamilyConfig,
    RegressionTaskSampler,
    build_model,
    make_family,
    min_class_samples,
)

KINDS = pytest.mark.parametrize("kind", FAMILY_KINDS)
BPFI, BPFO, BSF = 5.42, 3.58, 2.36


def all_factories(family: FactoryFamily):
    return family.train + family.held_out


def assert_same_family(a: FactoryFamily, b: FactoryFamily) -> None:
    assert [f.name for f in all_factories(a)] == [f.name for f in all_factories(b)]
    for fa, fb in zip(all_factories(a), all_factories(b), strict=True):
        assert torch.equal(fa.x, fb.x), fa.name
        assert torch.equal(fa.y, fb.y), fa.name
    assert a.characteristics == b.characteristics


def magnitude_spectra(x: torch.Tensor) -> torch.Tensor:
    """Unit-norm magnitude spectrum of each window of ``[n, 1, length]``."""
    spectra = torch.fft.rfft(x[:, 0]).abs()
    return spectra / spectra.norm(dim=1, keepdim=True)


# --------------------------------------------------------------------------- determinism


@KINDS
def test_same_seed_gives_identical_tensors(kind):
    config = FamilyConfig(kind, seed=7)
    assert_same_family(make_family(config), make_family(config))


@KINDS
def test_different_seed_gives_different_data(kind):
    a, b = make_family(FamilyConfig(kind, seed=0)), make_family(FamilyConfig(kind, seed=1))
    for fa, fb in zip(all_factories(a), all_factories(b), strict=True):
        assert fa.x.shape != fb.x.shape or not torch.equal(fa.x, fb.x), fa.name
    assert a.characteristics != b.characteristics


@KINDS
def test_generation_leaves_the_global_rng_untouched(kind):
    state = torch.get_rng_state()
    make_family(FamilyConfig(kind))
    assert torch.equal(torch.get_rng_state(), state)


@KINDS
def test_factories_do_not_change_when_the_family_grows(kind):
    small = make_family(FamilyConfig(kind, num_factories=3, num_held_out=2))
    large = make_family(FamilyConfig(kind, num_factories=9, num_held_out=3))
    for fa, fb in zip(
        small.train + small.held_out, large.train[:3] + large.held_out[:2], strict=True
    ):
        assert fa.name == fb.name
        assert torch.equal(fa.x, fb.x) and torch.equal(fa.y, fb.y), fa.name


# --------------------------------------------------------------------------- sizes and split


@KINDS
def test_sizes_are_unequal_and_within_bounds(kind):
    config = FamilyConfig(kind, num_factories=12, num_held_out=4, min_samples=40, max_samples=400)
    sizes = [f.num_samples for f in all_factories(make_family(config))]
    assert all(40 <= n <= 400 for n in sizes), sizes
    assert len(set(sizes)) >= len(sizes) - 2, sizes  # nearly all distinct
    assert max(sizes) >= 2 * min(sizes), sizes  # log-uniform spreads them widely


def test_equal_bounds_give_equal_sizes():
    family = make_family(FamilyConfig("quality", min_samples=50, max_samples=50))
    assert {f.num_samples for f in all_factories(family)} == {50}


@KINDS
def test_held_out_factories_are_disjoint_from_training_ones(kind):
    family = make_family(FamilyConfig(kind, num_factories=5, num_held_out=3))
    assert len(family.train) == 5 and len(family.held_out) == 3
    train_names = {f.name for f in family.train}
    held_names = {f.name for f in family.held_out}
    assert len(train_names) == 5 and len(held_names) == 3
    assert not train_names & held_names
    assert set(family.characteristics) == train_names | held_names
    for held in family.held_out:
        for train in family.train:
            assert family.characteristics[held.name] != family.characteristics[train.name]
            assert held.x.shape != train.x.shape or not torch.equal(held.x, train.x)


@KINDS
def test_factory_names_follow_the_kind_and_role(kind):
    family = make_family(FamilyConfig(kind, num_factories=4, num_held_out=2))
    assert [f.name for f in family.train] == [f"{kind}-{i:02d}" for i in range(4)]
    assert [f.name for f in family.held_out] == [f"{kind}-held-out-{i:02d}" for i in range(2)]


def test_zero_held_out_factories_is_allowed():
    family = make_family(FamilyConfig("quality", num_held_out=0))
    assert family.held_out == () and len(family.train) == 12


# --------------------------------------------------------------------------- shapes and models


def test_quality_factories_have_standardised_float_features_and_float_targets():
    family = make_family(FamilyConfig("quality", num_features=5))
    assert family.task_kind == "regression" and family.num_classes is None
    for f in all_factories(family):
        assert f.x.shape == (f.num_samples, 5) and f.x.dtype == torch.float32
        assert f.y.shape == (f.num_samples,) and f.y.dtype == torch.float32
        assert torch.isfinite(f.x).all() and torch.isfinite(f.y).all()
        torch.testing.assert_close(f.x.mean(0), torch.zeros(5), atol=1e-5, rtol=0)
        torch.testing.assert_close(f.x.std(0), torch.ones(5), atol=1e-4, rtol=0)
    targets = torch.cat([f.y for f in all_factories(family)])
    assert 0.2 < float(targets.std()) < 3.0  # roughly unit scale


def test_fault_factories_have_normalised_windows_and_integer_labels():
    family = make_family(FamilyConfig("fault", signal_length=128))
    assert family.task_kind == "classification" and family.num_classes == len(FAULT_CLASSES) == 4
    for f in all_factories(family):
        assert f.x.shape == (f.num_samples, 1, 128) and f.x.dtype == torch.float32
        assert f.y.shape == (f.num_samples,) and f.y.dtype == torch.int64
        assert torch.isfinite(f.x).all()
        torch.testing.assert_close(f.x.mean(-1), torch.zeros(f.num_samples, 1), atol=1e-5, rtol=0)
        torch.testing.assert_close(f.x.std(-1), torch.ones(f.num_samples, 1), atol=1e-4, rtol=0)


@KINDS
def test_default_model_config_builds_a_model_that_fits_the_data(kind):
    family = make_family(FamilyConfig(kind, num_factories=2, num_held_out=1, signal_length=128))
    config = family.model_config
    if kind == "quality":
        assert (config.name, config.input_shape, config.output_dim) == ("mlp", (6,), 1)
    else:
        assert (config.name, config.input_shape, config.output_dim) == ("cnn1d", (1, 128), 4)
        assert 16 <= config.hidden <= 32 and config.depth == 3
    model = build_model(config)
    factory = family.held_out[0]
    out = model(factory.x[:8])
    assert out.shape == (8, config.output_dim) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- fault labels


def test_fault_labels_cover_every_class_with_the_guaranteed_minimum():
    config = FamilyConfig("fault", num_factories=20, num_held_out=5, min_samples=40)
    floor = min_class_samples(config)
    assert floor == MIN_CLASS_SAMPLES
    normal_most_common = 0
    for f in all_factories(make_family(config)):
        assert int(f.y.min()) >= 0 and int(f.y.max()) <= 3
        counts = torch.bincount(f.y, minlength=4)
        assert int(counts.min()) >= floor, (f.name, counts.tolist())
        normal_most_common += int(counts.argmax()) == 0
    assert normal_most_common >= 15  # of 25: normal operation dominates


def test_fault_class_floor_grows_with_min_samples():
    config = FamilyConfig("fault", num_factories=4, num_held_out=1, min_samples=200)
    assert min_class_samples(config) == 25
    for f in all_factories(make_family(config)):
        assert int(torch.bincount(f.y, minlength=4).min()) >= 25, f.name


def test_smallest_fault_factory_is_exactly_balanced_at_the_floor():
    config = FamilyConfig("fault", num_factories=3, num_held_out=1, min_samples=40, max_samples=40)
    for f in all_factories(make_family(config)):
        assert torch.bincount(f.y, minlength=4).tolist() == [10, 10, 10, 10]


def test_fault_labels_are_shuffled_over_rows():
    factory = make_family(FamilyConfig("fault", num_factories=1, num_held_out=0)).train[0]
    assert not torch.equal(factory.y, factory.y.sort().values)


# --------------------------------------------------------------------------- task samplers


def test_every_fault_factory_supports_4_way_5_shot_tasks_with_5_query_shots():
    family = make_family(FamilyConfig("fault"))
    for i, f in enumerate(all_factories(family)):
        batch = ClassificationTaskSampler([f], ways=4, shots=5, query_shots=5, seed=i).sample(2)
        assert batch.support_x.shape == (2, 20, 1, 256)
        assert batch.query_y.shape == (2, 20)


def test_every_quality_factory_supports_20_shot_tasks():
    family = make_family(FamilyConfig("quality"))
    for i, f in enumerate(all_factories(family)):
        batch = RegressionTaskSampler([f], shots=20, query_size=20, seed=i).sample(2)
        assert batch.support_x.shape == (2, 20, 6) and batch.query_y.shape == (2, 20)
    # And all training factories together, as a client pool would use them.
    RegressionTaskSampler(family.train, shots=20, query_size=10, seed=0).sample(8)


# --------------------------------------------------------------------------- heterogeneity


def _ridge(features: torch.Tensor, y: torch.Tensor, penalty: float) -> torch.Tensor:
    gram = features.T @ features + penalty * torch.eye(features.shape[1], dtype=features.dtype)
    return torch.linalg.solve(gram, features.T @ y)


def pooled_and_per_factory_errors(seed: int) -> tuple[float, float]:
    """Held-out test error of one ridge fit on all training factories and of per-factory fits.

    Both use the same fixed random-feature expansion (bias, the features, 64 tanh units),
    and each per-factory fit is scored on rows of its factory it did not see, so this is
    not an in-sample comparison. Were the factories alike, the pooled fit, with far more
    data, would win.
    """
    family = make_family(
        FamilyConfig("quality", num_held_out=8, min_samples=300, max_samples=400, seed=seed)
    )
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 64, generator=g, dtype=torch.float64)
    bias = torch.randn(64, generator=g, dtype=torch.float64)

    def expand(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        ones = torch.ones(len(x), 1, dtype=x.dtype)
        return torch.cat([ones, x, torch.tanh(x @ weight + bias)], 1)

    pooled = _ridge(
        torch.cat([expand(f.x) for f in family.train]),
        torch.cat([f.y for f in family.train]).double(),
        penalty=1e-2,
    )
    pooled_errors, own_errors = [], []
    for f in family.held_out:
        rows = torch.randperm(f.num_samples, generator=g)
        fit, test = rows[: f.num_samples // 2], rows[f.num_samples // 2 :]
        features, y = expand(f.x), f.y.double()
        own = _ridge(features[fit], y[fit], penalty=1e-1)
        pooled_errors.append((features[test] @ pooled - y[test]).square().mean())
        own_errors.append((features[test] @ own - y[test]).square().mean())
    return float(torch.stack(pooled_errors).mean()), float(torch.stack(own_errors).mean())


def test_pooled_fit_predicts_held_out_quality_factories_much_worse_than_per_factory_fits():
    ratios = []
    for seed in range(3):
        pooled_error, own_error = pooled_and_per_factory_errors(seed)
        ratios.append(pooled_error / own_error)
    # Seen over seeds 0-7: ratios 3.1 to 15.6.
    assert min(ratios) > 2.5 and sum(ratios) / len(ratios) > 3.5, ratios


def test_quality_gains_flip_sign_in_some_factories():
    family = make_family(FamilyConfig("quality", num_factories=20))
    gains = [family.characteristics[f.name]["gain"] for f in family.train]
    assert any(g < 0 for g in gains) and any(g > 0 for g in gains)


def test_fault_class_mean_spectra_differ_between_factories_far_more_than_within():
    family = make_family(FamilyConfig("fault", num_factories=8, num_held_out=0, min_samples=200))
    g = torch.Generator().manual_seed(0)
    within, class_means = [], []
    for f in family.train:
        spectra = magnitude_spectra(f.x)
        first_half = torch.zeros(f.num_samples, dtype=torch.bool)
        first_half[torch.randperm(f.num_samples, generator=g)[: f.num_samples // 2]] = True
        for c in range(4):
            a = spectra[(f.y == c) & first_half].mean(0)
            b = spectra[(f.y == c) & ~first_half].mean(0)
            within.append((a - b).norm())
        class_means.append(torch.stack([spectra[f.y == c].mean(0) for c in range(4)]))
    means = torch.stack(class_means)  # [factories, classes, bins]
    distances = (means[:, None] - means[None]).norm(dim=-1)  # [factories, factories, classes]
    off_diagonal = ~torch.eye(len(family.train), dtype=torch.bool)
    between = distances[off_diagonal].mean()
    assert between > 3 * torch.stack(within).mean(), (
        float(between),
        float(torch.stack(within).mean()),
    )


def test_fault_impulses_repeat_at_the_characteristic_fault_frequencies():
    """The envelope spectrum of the resonance band peaks at BPFO / BSF times shaft speed.

    (Inner-race impulses are modulated at the shaft speed, so their envelope spectrum
    can peak at the shaft speed instead; the classic envelope-analysis sideband.)
    """
    family = make_family(FamilyConfig("fault", num_factories=6, num_held_out=2, min_samples=200))
    length = 256
    freqs = torch.fft.rfftfreq(length)
    for f in all_factories(family):
        shaft = family.characteristics[f.name]["shaft_speed"]
        spectrum = torch.fft.rfft(f.x[:, 0])
        spectrum[:, freqs < 0.08] = 0  # keep the resonance band, drop the shaft harmonics
        band = torch.fft.irfft(spectrum, length)
        envelope = band.square()
        envelope_spectrum = torch.fft.rfft(envelope - envelope.mean(1, keepdim=True)).abs()
        for label, ratio in ((2, BPFO), (3, BSF)):
            mean = envelope_spectrum[f.y == label].mean(0)
            mean[0] = 0
            peak = float(freqs[int(mean[: length // 4].argmax())])
            # The strongest line is the fault frequency or its second harmonic.
            error = min(abs(peak - k * ratio * shaft) for k in (1, 2))
            assert error <= 1.5 / length, (f.name, label, peak, ratio * shaft)


# --------------------------------------------------------------------------- validation


def test_unknown_kind_lists_the_valid_kinds():
    with pytest.raises(ValueError, match=r"kind 'rul'.*quality, fault"):
        FamilyConfig("rul")


def test_min_samples_above_max_samples_is_rejected():
    with pytest.raises(ValueError, match=r"min_samples \(50\) must be <= max_samples \(40\)"):
        FamilyConfig("quality", min_samples=50, max_samples=40)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_factories", 0),
        ("num_factories", -3),
        ("num_held_out", -1),
        ("min_samples", 0),
        ("max_samples", 0),
        ("num_features", 0),
        ("signal_length", 0),
        ("signal_length", 32),
    ],
)
def test_non_positive_or_too_small_sizes_are_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be >= "):
        FamilyConfig("quality", **{field: value})


@pytest.mark.parametrize(
    ("field", "value"), [("num_factories", 2.5), ("seed", "0"), ("min_samples", True)]
)
def test_non_integer_sizes_are_rejected_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be an integer"):
        FamilyConfig("quality", **{field: value})


@pytest.mark.parametrize("value", [-0.1, 1.5, True, "1"])
def test_a_nonlinearity_share_outside_zero_to_one_is_rejected(value):
    with pytest.raises(ValueError, match=r"^min_nonlinearity must be a number in \[0, 1.0\]"):
        FamilyConfig("quality", min_nonlinearity=value)


def test_min_nonlinearity_raises_every_factorys_share_and_changes_nothing_else():
    default = make_family(FamilyConfig("quality", seed=2))
    nonlinear = make_family(FamilyConfig("quality", seed=2, min_nonlinearity=1.0))
    for name, hidden in nonlinear.characteristics.items():
        assert hidden["nonlinearity"] == 1.0
        assert {k: v for k, v in hidden.items() if k != "nonlinearity"} == {
            k: v for k, v in default.characteristics[name].items() if k != "nonlinearity"}
    assert all(torch.equal(a.x, b.x) for a, b in zip(default.train, nonlinear.train, strict=True))


def test_fault_family_needs_room_for_the_per_class_minimum():
    with pytest.raises(ValueError, match=r"min_samples must be >= 40 for kind 'fault'"):
        FamilyConfig("fault", min_samples=39)
    FamilyConfig("quality", min_samples=39)  # no such floor for regression


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FamilyConfig("quality").seed = 1  # type: ignore[misc]
