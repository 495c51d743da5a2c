"""Latent neighbourhood factors of the synthetic city, and the indicators they drive.

Each factor is a spatially smooth field over the region centres (km coordinates), standardised
to mean 0 and standard deviation 1. Each modality renders only some of them, and every
indicator mixes factors that different modalities see, so that fusing modalities can beat any
single one.
"""

from __future__ import annotations

import numpy as np

FACTORS = ("density", "affluence", "commercial", "greenery", "nightlife", "industry")
INDICATORS = ("population_density", "housing_density", "crime", "poi_count")


def _standardise(v: np.ndarray) -> np.ndarray:
    sd = v.std()
    return (v - v.mean()) / (sd if sd > 0 else 1.0)


def _bumps(
    xy: np.ndarray,
    rng: np.random.Generator,
    radius: float,
    n: int,
    width: tuple[float, float],
    ring: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """A sum of ``n`` Gaussian bumps with random centres (in a ring), widths and signs."""
    r = radius * np.sqrt(rng.uniform(ring[0] ** 2, ring[1] ** 2, n))
    theta = rng.uniform(0, 2 * np.pi, n)
    centres = np.column_stack([r * np.cos(theta), r * np.sin(theta)])
    widths = rng.uniform(*width, n) * radius
    amps = rng.normal(0, 1, n)
    d2 = ((xy[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    return (amps * np.exp(-d2 / (2 * widths**2))).sum(1)


def latent_factors(
    xy: np.ndarray, radius: float, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Smooth latent fields at the points ``xy`` (km from the centre) of a city of ``radius`` km."""
    r = np.hypot(xy[:, 0], xy[:, 1]) / radius
    core = np.exp(-r / 0.35)
    density = _standardise(
        1.6 * core + _standardise(_bumps(xy, rng, radius, 10, (0.12, 0.3))) * 0.55
    )
    commercial = _standardise(
        np.exp(-r / 0.18) * 1.2 + 0.7 * _standardise(_bumps(xy, rng, radius, 14, (0.05, 0.14)))
    )
    industry = _standardise(np.abs(_bumps(xy, rng, radius, 6, (0.08, 0.18), ring=(0.45, 1.0))))
    affluence = _standardise(_bumps(xy, rng, radius, 9, (0.15, 0.35)) - 0.35 * industry)
    greenery = _standardise(_bumps(xy, rng, radius, 12, (0.08, 0.25)) - 0.45 * density)
    nightlife = _standardise(
        0.5 * commercial + _standardise(_bumps(xy, rng, radius, 10, (0.05, 0.12)))
    )
    fields = {
        "density": density,
        "affluence": affluence,
        "commercial": commercial,
        "greenery": greenery,
        "nightlife": nightlife,
        "industry": industry,
    }
    # A soft cap at about 3 sd: a sharp downtown peak should not make one region an outlier
    # that dominates every regression on the raw indicators.
    return {k: _standardise(3.0 * np.tanh(v / 3.0)) for k, v in fields.items()}


def poi_rate(f: dict[str, np.ndarray]) -> np.ndarray:
    """Expected number of POIs (listed or not) per region."""
    return np.exp(2.0 + 0.45 * f["density"] + 0.6 * f["commercial"] + 0.3 * f["nightlife"])


def indicators(
    f: dict[str, np.ndarray], poi_total: np.ndarray, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Socioeconomic targets: factor mixes plus noise (log-normal or Poisson)."""
    n = f["density"].shape[0]

    def noise(sd: float) -> np.ndarray:
        return np.asarray(rng.normal(0, sd, n))

    pop = np.exp(
        8.2
        + 0.55 * f["density"]
        - 0.35 * f["industry"]
        - 0.3 * f["commercial"]
        + 0.2 * f["affluence"]
        + 0.15 * f["greenery"]
        + noise(0.3)
    )
    housing = np.exp(
        7.0
        + 0.5 * f["density"]
        - 0.3 * f["affluence"]
        - 0.35 * f["industry"]
        + 0.15 * f["commercial"]
        + noise(0.3)
    )
    crime_rate = np.exp(
        2.3
        + 0.5 * f["nightlife"]
        - 0.45 * f["affluence"]
        + 0.3 * f["density"]
        + 0.25 * f["commercial"]
        + noise(0.3)
    )
    return {
        "population_density": np.round(pop, 1),
        "housing_density": np.round(housing, 1),
        "crime": rng.poisson(crime_rate).astype(float),
        "poi_count": poi_total.astype(float),
    }
