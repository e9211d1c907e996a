"""Drift statistics and decisions on generated traffic with known shifts."""

from __future__ import annotations

import numpy as np
import pytest

from lakeloop.drift import DriftThresholds, Reference, js_distance, psi
from lakeloop.errors import DriftError
from tests._examples import DriftKnobs, generate_transactions

FEATURES = ["amount", "customer_age", "account_age_days", "distance_from_home_km", "transactions_last_24h",
            "merchant_category", "country", "channel"]


def columns(frame) -> dict[str, np.ndarray]:
    return {name: frame[name].to_numpy() for name in FEATURES}


def ks_and_wasserstein(reference_sorted: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """The exact two-sample KS and Wasserstein-1 (the oracle for the library's cached-grid values):
    the largest gap and the area between the empirical CDFs on the union of both samples."""
    current_sorted = np.sort(current)
    grid = np.sort(np.concatenate([reference_sorted, current_sorted]))
    cdf_ref = np.searchsorted(reference_sorted, grid, side="right") / len(reference_sorted)
    cdf_cur = np.searchsorted(current_sorted, grid, side="right") / len(current_sorted)
    gaps = np.abs(cdf_ref - cdf_cur)
    return float(gaps.max()), float(np.sum(gaps[:-1] * np.diff(grid)))


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference.build(columns(generate_transactions(50_000, seed=1)))


def test_statistics_match_their_definitions():
    rng = np.random.default_rng(0)
    a, b = np.sort(rng.normal(0, 1, 20_000)), rng.normal(0.5, 1, 20_000)
    ks, wasserstein = ks_and_wasserstein(a, b)
    assert wasserstein == pytest.approx(0.5, abs=0.03)  # W1 of a pure shift is the shift
    assert ks == pytest.approx(0.197, abs=0.02)  # 2*Phi(0.25) - 1
    assert ks_and_wasserstein(a, a.copy()) == (0.0, 0.0)
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1.0)
    assert js_distance(np.array([3.0, 1.0]), np.array([6.0, 2.0])) == pytest.approx(0.0, abs=1e-9)


def test_same_distribution_is_no_drift(reference):
    report = reference.compare(columns(generate_transactions(50_000, seed=2)))
    assert report.status == "no drift" and report.drifted == []
    assert all(f.score < 0.05 for f in report.features)


def test_exactly_the_shifted_columns_are_flagged(reference):
    shifted = generate_transactions(50_000, seed=3, drift=DriftKnobs(
        amount_shift=0.8, distance_scale=3.0, new_categories=("casino",), new_category_share=0.3))
    report = reference.compare(columns(shifted))
    assert set(report.drifted) == {"amount", "distance_from_home_km", "merchant_category"}
    category = next(f for f in report.features if f.name == "merchant_category")
    assert category.unseen_share == pytest.approx(0.3, abs=0.02)  # unseen categories counted, not dropped
    assert report.status == "no drift"  # 3 of 8 features: below the 50% share ...
    keyed = reference.compare(columns(shifted), DriftThresholds(key_features=["amount"]))
    assert keyed.status == "drift" and "key feature(s) amount" in keyed.reason  # ... unless a key feature moved


def test_cached_reference_gives_the_same_scores(reference, tmp_path):
    window = columns(generate_transactions(20_000, seed=4, drift=DriftKnobs(amount_shift=0.5)))
    loaded = Reference.load(reference.save(tmp_path / "ref"))
    assert loaded.compare(window).model_dump() == reference.compare(window).model_dump()


def test_empty_window_nans_and_schema_changes(reference):
    empty = {name: np.array([], dtype=object if name in FEATURES[5:] else np.float64) for name in FEATURES}
    assert reference.compare(empty).status == "no data"

    window = columns(generate_transactions(5_000, seed=5))
    window["amount"] = window["amount"].astype(np.float64)
    window["amount"][:500] = np.nan
    window["country"] = window["country"].astype(object)
    window["country"][:250] = None
    report = reference.compare(window)
    amount = next(f for f in report.features if f.name == "amount")
    country = next(f for f in report.features if f.name == "country")
    assert amount.nan_fraction_current == pytest.approx(0.1) and country.nan_fraction_current == pytest.approx(0.05)

    with pytest.raises(DriftError, match="lacks column\\(s\\) 'channel'"):
        reference.compare({k: v for k, v in window.items() if k != "channel"})
    with pytest.raises(DriftError, match="'customer_age' was numeric in the reference"):
        reference.compare({**window, "customer_age": window["customer_age"].astype(str)})


def test_cached_grid_agrees_with_the_exact_two_sample_statistics():
    rng = np.random.default_rng(7)
    reference = {"x": rng.lognormal(1, 0.6, 100_000), "k": rng.integers(0, 30, 100_000).astype(np.float64)}
    window = {"x": rng.lognormal(1.2, 0.5, 50_000), "k": rng.integers(5, 40, 50_000).astype(np.float64)}
    report = Reference.build(reference).compare(window)
    for feature in report.features:
        ks, wasserstein = ks_and_wasserstein(np.sort(reference[feature.name]), window[feature.name])
        assert feature.ks == pytest.approx(ks, abs=2e-3)
        assert feature.score * np.std(reference[feature.name]) == pytest.approx(wasserstein, rel=0.01)


def _with_score(frame, seed: int) -> dict[str, np.ndarray]:
    """The fraud columns plus a model score as heavy-tailed as a rare-class probability."""
    cols = columns(frame)
    cols["output_probability"] = np.random.default_rng(seed).beta(0.3, 8, len(frame))
    return cols


@pytest.mark.parametrize("rows", [100, 300, 1_000, 10_000])
def test_a_small_window_of_unchanged_traffic_is_never_drift(rows):
    reference = Reference.build(_with_score(generate_transactions(100_000, seed=1), 1))
    thresholds = DriftThresholds(key_features=["output_probability"])  # one key feature is enough to flag
    for seed in range(2, 7):  # five windows of each size
        report = reference.compare(_with_score(generate_transactions(rows, seed=seed), seed), thresholds)
        assert report.status == "no drift" and report.drifted == [], (rows, seed, report.reason,
                                                                      [(f.name, f.score, f.threshold)
                                                                       for f in report.features])
    # the floor is the window's sampling noise: small windows get a higher bar, large ones the configured one
    small = reference.compare(_with_score(generate_transactions(rows, seed=9), 9), thresholds)
    amount = next(f for f in small.features if f.name == "amount")
    assert amount.threshold >= thresholds.wasserstein


@pytest.mark.parametrize("rows", [300, 1_000, 10_000])
def test_a_shift_is_still_found_in_a_small_window(rows):
    reference = Reference.build(_with_score(generate_transactions(100_000, seed=1), 1))
    shifted = generate_transactions(rows, seed=3, drift=DriftKnobs(amount_shift=1.5, distance_scale=4.0))
    report = reference.compare(_with_score(shifted, 3), DriftThresholds())
    assert {"amount", "distance_from_home_km"} <= set(report.drifted), report.reason


def test_per_feature_thresholds_override_the_defaults(reference):
    shifted = columns(generate_transactions(20_000, seed=3, drift=DriftKnobs(amount_shift=1.5)))
    loose = {"amount": DriftThresholds(wasserstein=50.0, psi=50.0)}
    assert "amount" in reference.compare(shifted).drifted
    assert "amount" not in reference.compare(shifted, per_feature=loose).drifted
