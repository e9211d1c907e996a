"""PNG plots of the most drifted features: reference against current, one figure each."""

from __future__ import annotations

import io

import numpy as np

from lakeloop.drift._reference import CategoricalReference, DriftReport, Reference
from lakeloop.drift._stats import histogram


def plot_features(reference: Reference, window: dict[str, np.ndarray], report: DriftReport, top: int = 3
                  ) -> dict[str, bytes]:
    """{feature: PNG} for the `top` features with the highest scores (drifted or not)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ranked = sorted((f for f in report.features if np.isfinite(f.score)), key=lambda f: f.score, reverse=True)[:top]
    plots = {}
    for feature in ranked:
        ref = reference.columns[feature.name]
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        if isinstance(ref, CategoricalReference):
            labels = [*ref.categories, "<unseen>"]
            current = np.asarray(window[feature.name]).astype(str)
            counts = [float(np.sum(current == c)) for c in ref.categories]
            counts.append(len(current) - sum(counts))
            x = np.arange(len(labels))
            ax.bar(x - 0.2, np.append(ref.counts / ref.counts.sum(), 0.0), 0.4, label="reference")
            ax.bar(x + 0.2, np.asarray(counts) / max(len(current), 1), 0.4, label="current")
            ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        else:
            values = np.asarray(window[feature.name], dtype=np.float64)
            values = values[~np.isnan(values)]
            edges = ref.edges
            x = np.arange(len(edges) + 1)
            ax.bar(x - 0.2, ref.fractions, 0.4, label="reference")
            ax.bar(x + 0.2, histogram(values, edges), 0.4, label="current")
            ax.set_xlabel("reference decile")
        ax.set_title(f"{feature.name}: score {feature.score:.3f}" + (" (drifted)" if feature.drifted else ""),
                     fontsize=9)
        ax.set_ylabel("share of rows")
        ax.legend(fontsize=7)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        plots[feature.name] = buffer.getvalue()
    return plots
