"""A drift reference built once per model version, and the comparison of a window against it.

Building the reference sorts and bins every column once; it is saved (npz + JSON) and reused, so
comparing a new window costs only that window's own sort and histogram.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from lakeloop.drift import _stats as st
from lakeloop.errors import DriftError

UNSEEN = "<unseen>"
GRID_POINTS = 1000  # quantiles of the reference kept for KS and Wasserstein
# Sampling noise: a window drawn from the reference itself scores above zero, more so the smaller it is
# (measured: 300 training rows gave a normalised Wasserstein of 0.18 on `amount`, over the 0.1 threshold).
# Each feature's threshold is therefore at least NOISE_MARGIN times the largest score of NOISE_DRAWS
# windows of the same size drawn from the reference; above NOISE_ROWS rows the noise is scaled (1/sqrt(n)
# for distances, 1/n for PSI) from windows of NOISE_ROWS.
NOISE_DRAWS = 40
NOISE_ROWS = 4000
NOISE_MARGIN = 1.5


class DriftThresholds(BaseModel):
    """When a feature, and the whole window, count as drifted (effect sizes; Evidently's defaults)."""

    model_config = ConfigDict(extra="forbid")

    wasserstein: float = Field(0.1, gt=0, description="Numbers: Wasserstein distance / reference std.")
    psi: float = Field(0.2, gt=0, description="Numbers: population stability index on reference deciles.")
    js: float = Field(0.1, gt=0, description="Categories: Jensen-Shannon distance (base 2), unseen ones included.")
    drifted_share: float = Field(0.5, gt=0, le=1, description="Window drifts when this share of features does...")
    key_features: list[str] = Field([], description="... or when any of these does.")
    bins: Literal[4, 5, 8, 10, 20, 25, 40, 50, 100] = Field(
        10, description="Quantile bins of the reference for PSI (they must divide its 1,000-point grid).")


@dataclass
class NumericReference:
    edges: np.ndarray  # decile edges, for PSI
    fractions: np.ndarray
    grid: np.ndarray  # fine quantile grid with the extremes, for KS and Wasserstein
    grid_cdf: np.ndarray  # the reference's CDF on it
    std: float
    nan_fraction: float
    noise: tuple[float, float] | None = None  # (Wasserstein, PSI) sampling noise of NOISE_ROWS-row windows


@dataclass
class CategoricalReference:
    categories: list[str]
    counts: np.ndarray
    nan_fraction: float
    noise: float | None = None  # Jensen-Shannon sampling noise of NOISE_ROWS-row windows


class FeatureDrift(BaseModel):
    name: str
    kind: Literal["numeric", "categorical"]
    score: float  # the deciding effect size: normalised Wasserstein or JS distance
    psi: float | None = None
    ks: float | None = None
    chi_square: float | None = None
    unseen_share: float | None = None  # categories the reference never saw
    threshold: float | None = None  # the score's threshold for this window: configured, or its sampling noise
    nan_fraction_reference: float
    nan_fraction_current: float
    drifted: bool


class DriftReport(BaseModel):
    status: Literal["drift", "no drift", "no data"]
    rows_reference: int
    rows_current: int
    features: list[FeatureDrift]
    drifted: list[str]
    drifted_share: float
    reason: str


Column = np.ndarray | pa.Array | pa.ChunkedArray  # windows usually arrive as Arrow (parquet logs)


def _is_numeric(values: Column) -> bool:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        t = values.type
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)
    return values.dtype.kind in "fiub"


def _floats(values: Column) -> np.ndarray:
    if isinstance(values, pa.Array | pa.ChunkedArray):
        values = values.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64)


def _dtype(values: Column) -> str:
    return str(values.type if isinstance(values, pa.Array | pa.ChunkedArray) else values.dtype)


def _categories(values: Column) -> tuple[list[str], np.ndarray, int]:
    """(categories, counts, missing) of a string column; None/NaN are missing, not a category.

    Counted by Arrow's hash kernel: no Python loop over the rows.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        array = values if pa.types.is_string(values.type) else values.cast(pa.string())
    else:
        array = pa.array(values, type=pa.string(), from_pandas=True)
    missing = array.null_count
    counted = pc.value_counts(array.drop_null()) if missing else pc.value_counts(array)
    categories = counted.field("values").to_pylist()
    counts = counted.field("counts").to_numpy().astype(np.int64)
    order = np.argsort(categories)
    return [categories[i] for i in order], counts[order], missing


class Reference:
    """Per-column summaries of the training data a model was trained on."""

    def __init__(self, columns: dict[str, NumericReference | CategoricalReference], rows: int) -> None:
        self.columns, self.rows = columns, rows

    @classmethod
    def build(cls, data: Mapping[str, Column], bins: int = 10) -> Reference:
        """Summarise `data` (column name → numpy or Arrow array; numbers numeric, categories strings)."""
        rows = len(next(iter(data.values()))) if data else 0
        if rows == 0:
            raise DriftError("the drift reference has no rows: train on data first")
        columns: dict[str, NumericReference | CategoricalReference] = {}
        for name, values in data.items():
            if _is_numeric(values):
                values = _floats(values)
                present = np.sort(values[~np.isnan(values)])
                if len(present) == 0:
                    raise DriftError(f"reference column {name!r} has no values (all NaN)")
                quantiles = np.quantile(present, np.linspace(0, 1, GRID_POINTS + 1))
                step = GRID_POINTS // bins  # the bin edges are exactly points of the grid
                edges = np.unique(quantiles[step:GRID_POINTS - step + 1:step])
                grid = np.unique(quantiles)
                grid_cdf = np.searchsorted(present, grid, side="right") / len(present)
                columns[name] = NumericReference(edges, st.histogram(present, edges), grid, grid_cdf,
                                                 float(present.std()) or 1.0, 1 - len(present) / rows)
            else:
                categories, counts, missing = _categories(values)
                columns[name] = CategoricalReference(categories, counts, missing / rows)
        for name, ref in columns.items():  # once per reference: any window above NOISE_ROWS rows reuses it
            if isinstance(ref, NumericReference):
                ref.noise = _numeric_noise(ref, NOISE_ROWS, name)
            else:
                ref.noise = _categorical_noise(ref, NOISE_ROWS, name)
        return cls(columns, rows)

    # -- cache ------------------------------------------------------------------------------------

    def save(self, folder: Path) -> Path:
        """Write `reference.npz` and `reference.json` into `folder` (atomically, per file)."""
        folder.mkdir(parents=True, exist_ok=True)
        arrays, meta = {}, {"rows": self.rows, "columns": {}}
        for i, (name, ref) in enumerate(self.columns.items()):
            if isinstance(ref, NumericReference):
                arrays.update({f"{i}_edges": ref.edges, f"{i}_fractions": ref.fractions, f"{i}_grid": ref.grid,
                               f"{i}_grid_cdf": ref.grid_cdf})
                meta["columns"][name] = {"index": i, "kind": "numeric", "std": ref.std,
                                         "nan_fraction": ref.nan_fraction, "noise": ref.noise}
            else:
                arrays[f"{i}_counts"] = ref.counts
                meta["columns"][name] = {"index": i, "kind": "categorical", "categories": ref.categories,
                                         "nan_fraction": ref.nan_fraction, "noise": ref.noise}
        partial = folder / "reference.partial.npz"
        np.savez(partial, **arrays)
        partial.replace(folder / "reference.npz")
        (folder / "reference.json.partial").write_text(json.dumps(meta))
        (folder / "reference.json.partial").replace(folder / "reference.json")
        return folder

    @classmethod
    def load(cls, folder: Path) -> Reference:
        meta = json.loads((folder / "reference.json").read_text())
        columns: dict[str, NumericReference | CategoricalReference] = {}
        with np.load(folder / "reference.npz") as arrays:
            for name, m in meta["columns"].items():
                i = m["index"]
                if m["kind"] == "numeric":
                    noise = m.get("noise")
                    columns[name] = NumericReference(arrays[f"{i}_edges"], arrays[f"{i}_fractions"],
                                                     arrays[f"{i}_grid"], arrays[f"{i}_grid_cdf"], m["std"],
                                                     m["nan_fraction"], tuple(noise) if noise else None)
                else:
                    columns[name] = CategoricalReference(m["categories"], arrays[f"{i}_counts"], m["nan_fraction"],
                                                         m.get("noise"))
        return cls(columns, meta["rows"])

    # -- comparison -------------------------------------------------------------------------------

    def compare(self, window: Mapping[str, Column], thresholds: DriftThresholds | None = None,
                per_feature: Mapping[str, DriftThresholds] | None = None) -> DriftReport:
        """Score every reference column in `window` and decide whether the window drifted.

        A feature drifts when its effect size passes its threshold (`per_feature`'s, else `thresholds`), or
        the sampling noise of a window this size drawn from the reference, whichever is higher: a small
        window of unchanged traffic never counts as drift.

        Raises:
            DriftError: the window lacks a reference column, or a column changed kind (numbers
                became strings or the other way round): the logs no longer match the model.
        """
        thresholds = thresholds or DriftThresholds()
        missing = [name for name in self.columns if name not in window]
        if missing:
            raise DriftError(f"the window lacks column(s) {', '.join(map(repr, missing))} that the model's reference "
                             f"has ({', '.join(self.columns)}): the inference logs do not match this model")
        rows = len(next(iter(window.values()))) if window else 0
        if rows == 0:
            return DriftReport(status="no data", rows_reference=self.rows, rows_current=0, features=[], drifted=[],
                               drifted_share=0.0, reason="the window holds no rows")
        per_feature = per_feature or {}
        features = [self._feature(name, window[name], per_feature.get(name, thresholds)) for name in self.columns]
        drifted = [f.name for f in features if f.drifted]
        share = len(drifted) / len(features)
        keys = [k for k in thresholds.key_features if k in drifted]
        is_drift = share >= thresholds.drifted_share or bool(keys)
        reason = (f"{len(drifted)} of {len(features)} features drifted ({share:.0%}; threshold "
                  f"{thresholds.drifted_share:.0%})" + (f"; key feature(s) {', '.join(keys)}" if keys else ""))
        return DriftReport(status="drift" if is_drift else "no drift", rows_reference=self.rows, rows_current=rows,
                           features=features, drifted=drifted, drifted_share=share, reason=reason)

    def _feature(self, name: str, values: Column, t: DriftThresholds) -> FeatureDrift:
        ref = self.columns[name]
        if isinstance(ref, NumericReference):
            if not _is_numeric(values):
                raise DriftError(f"column {name!r} was numeric in the reference but is {_dtype(values)} in the window")
            values = _floats(values)
            nan = np.isnan(values)
            present = values[~nan]
            if len(present) == 0:  # nothing to compare: every value missing is drift in itself
                return FeatureDrift(name=name, kind="numeric", score=float("inf"), nan_fraction_current=1.0,
                                    nan_fraction_reference=ref.nan_fraction, drifted=True)
            grid, ref_cdf = ref.grid, ref.grid_cdf
            outside = present[(present < grid[0]) | (present > grid[-1])]
            if len(outside):  # the window reaches beyond the reference: grid that part by its own quantiles
                extra = np.unique(np.quantile(outside, np.linspace(0, 1, 101)))
                below, above = extra[extra < grid[0]], extra[extra > grid[-1]]
                grid = np.concatenate([below, grid, above])
                ref_cdf = np.concatenate([np.zeros(len(below)), ref_cdf, np.ones(len(above))])
            cur_cdf = st.cdf_at(grid, present)
            ks, wasserstein = st.ks_and_wasserstein_on_grid(grid, ref_cdf, cur_cdf)
            score = wasserstein / ref.std
            # the decile edges are points of the grid (the same quantiles): their shares come for free
            at_edges = cur_cdf[np.searchsorted(grid, ref.edges)]
            psi = st.psi(ref.fractions, np.diff(np.concatenate([[0.0], at_edges, [1.0]])))
            noise_w, noise_psi = _numeric_noise(ref, len(present), name)
            w_limit, psi_limit = max(t.wasserstein, noise_w), max(t.psi, noise_psi)
            return FeatureDrift(name=name, kind="numeric", score=score, psi=psi, ks=ks, threshold=w_limit,
                                nan_fraction_reference=ref.nan_fraction, nan_fraction_current=float(nan.mean()),
                                drifted=score >= w_limit or psi >= psi_limit)
        if _is_numeric(values):
            raise DriftError(f"column {name!r} held categories in the reference but is {_dtype(values)} in the window")
        categories, counts, missing = _categories(values)
        index = {c: i for i, c in enumerate(ref.categories)}
        current = np.zeros(len(ref.categories) + 1)  # the last slot: categories the reference never saw
        for category, count in zip(categories, counts, strict=True):
            current[index.get(category, len(ref.categories))] += count
        reference = np.append(ref.counts.astype(np.float64), 0.0)
        js = st.js_distance(reference, current)
        limit = max(t.js, _categorical_noise(ref, int(current.sum()), name))
        return FeatureDrift(name=name, kind="categorical", score=js, chi_square=st.chi_square(reference, current),
                            unseen_share=float(current[-1] / max(current.sum(), 1)), threshold=limit,
                            nan_fraction_reference=ref.nan_fraction, nan_fraction_current=missing / len(values),
                            drifted=js >= limit)


def _rng(name: str, rows: int) -> np.random.Generator:
    """Seeded by the feature and the window size: the same window always gets the same decision."""
    return np.random.default_rng([zlib.crc32(name.encode()), rows])


def _numeric_noise(ref: NumericReference, rows: int, name: str) -> tuple[float, float]:
    """NOISE_MARGIN x the largest (normalised Wasserstein, PSI) of windows of `rows` drawn from the reference."""
    if rows == 0:
        return 0.0, 0.0
    m = min(rows, NOISE_ROWS)
    scale = m / rows
    if m == NOISE_ROWS and ref.noise is not None:
        return ref.noise[0] * np.sqrt(scale), ref.noise[1] * scale
    rng = _rng(name, m)
    worst_w = worst_psi = 0.0
    for _ in range(NOISE_DRAWS):
        # inverse-CDF sampling on the reference's own quantile grid (steps: discrete values stay discrete)
        sample = ref.grid[np.minimum(np.searchsorted(ref.grid_cdf, rng.random(m), side="left"), len(ref.grid) - 1)]
        cdf = st.cdf_at(ref.grid, sample)
        _, w = st.ks_and_wasserstein_on_grid(ref.grid, ref.grid_cdf, cdf)
        at_edges = cdf[np.searchsorted(ref.grid, ref.edges)]
        worst_w = max(worst_w, w / ref.std)
        worst_psi = max(worst_psi, st.psi(ref.fractions, np.diff(np.concatenate([[0.0], at_edges, [1.0]]))))
    return float(NOISE_MARGIN * worst_w * np.sqrt(scale)), float(NOISE_MARGIN * worst_psi * scale)


def _categorical_noise(ref: CategoricalReference, rows: int, name: str) -> float:
    """NOISE_MARGIN x the largest Jensen-Shannon distance of windows of `rows` drawn from the reference."""
    if rows == 0:
        return 0.0
    m = min(rows, NOISE_ROWS)
    if m == NOISE_ROWS and ref.noise is not None:
        return ref.noise * float(np.sqrt(m / rows))
    p = ref.counts / max(ref.counts.sum(), 1)
    reference = np.append(ref.counts.astype(np.float64), 0.0)
    draws = _rng(name, m).multinomial(m, p, size=NOISE_DRAWS)
    worst = max(st.js_distance(reference, np.append(d.astype(np.float64), 0.0)) for d in draws)
    return NOISE_MARGIN * worst * float(np.sqrt(m / rows))
