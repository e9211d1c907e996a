"""Daily unit sales of store items: a regression example project (generated, seeded).

    python examples/demand/generate.py demand.parquet --rows 20000 [--seed 0] [--shift 0.0]

Sales follow price (elasticity), promotions, weekday, temperature and the store; some prices and
temperatures are missing (a broken till, a weather feed gap). `--shift` moves prices and the weather
(for drift demos).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

STORES = ("berlin-mitte", "hamburg-altona", "munich-schwabing", "cologne-ehrenfeld", "dubai-marina")
CATEGORIES = ("dairy", "bakery", "produce", "beverages", "frozen", "household")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def generate(rows: int, seed: int = 0, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    store = rng.choice(STORES, rows)
    category = rng.choice(CATEGORIES, rows, p=[0.2, 0.15, 0.2, 0.2, 0.1, 0.15])
    weekday = rng.choice(WEEKDAYS, rows)
    base_price = {"dairy": 1.5, "bakery": 2.5, "produce": 2.0, "beverages": 1.8, "frozen": 4.0, "household": 5.0}
    price = np.array([base_price[c] for c in category]) * rng.lognormal(0.0, 0.25, rows) * (1 + shift)
    promo = rng.random(rows) < 0.15
    temperature = rng.normal(16 + 6 * shift, 8, rows)
    store_size = np.array([{"berlin-mitte": 1.3, "hamburg-altona": 1.0, "munich-schwabing": 1.1,
                            "cologne-ehrenfeld": 0.8, "dubai-marina": 1.5}[s] for s in store])
    weekend = np.isin(weekday, ("sat", "sun"))
    cold_drinks = (category == "beverages") * np.clip(temperature - 18, 0, None) * 0.04
    log_mean = (np.log(40 * store_size) - 1.2 * np.log(price) + 0.5 * promo + 0.25 * weekend + cold_drinks
                - 0.3 * (category == "household"))
    units = rng.poisson(np.exp(log_mean + rng.normal(0, 0.15, rows)))
    frame = pd.DataFrame({
        "row_id": [f"s{seed}-{i:07d}" for i in range(rows)], "store": store, "category": category,
        "weekday": weekday, "price": price.round(2), "promo": promo, "temperature_c": temperature.round(1),
        "units_sold": units.astype(np.float64)})
    frame.loc[rng.random(rows) < 0.03, "price"] = np.nan
    frame.loc[rng.random(rows) < 0.05, "temperature_c"] = np.nan
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shift", type=float, default=0.0)
    args = parser.parse_args()
    frame = generate(args.rows, args.seed, args.shift)
    frame.to_parquet(args.output) if args.output.suffix == ".parquet" else frame.to_csv(args.output, index=False)
    print(f"wrote {len(frame)} rows to {args.output}")


if __name__ == "__main__":
    main()
