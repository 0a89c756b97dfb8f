"""Independent computations of the report's power and exact-test statistics, for the tests to check against:
written out from their definitions here, not calling kdtune.report.stats."""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import stats


def power_by_hand(n: int, effect: float, sd: float, level: float = 0.05) -> float:
    """P(|T| > t_crit) for T = (Z + δ) / √(V / df), Z standard normal, V chi-square with df = n - 1 degrees of
    freedom, δ = effect·√n / sd: the normal tails integrated over V's density (no noncentral-t routine, whose
    cdf returns NaN for some large δ)."""
    from scipy.integrate import quad

    df, critical = n - 1, stats.t.ppf(1 - level / 2, n - 1)
    shift = effect * math.sqrt(n) / sd

    def rejects(v: float) -> float:
        scale = math.sqrt(v / df)
        return stats.chi2.pdf(v, df) * (stats.norm.sf(critical * scale - shift)
                                        + stats.norm.cdf(-critical * scale - shift))

    # V's density is unbounded at 0 for one degree of freedom: integrate its head and its tail apart.
    head = quad(rejects, 0, df, limit=200, epsabs=1e-13, epsrel=1e-11)[0]
    tail = quad(rejects, df, math.inf, limit=200, epsabs=1e-13, epsrel=1e-11)[0]
    return float(head + tail)


def mde_by_hand(n: int, sd: float, target: float = 0.8) -> float:
    """The effect whose power is `target`, by plain bisection on power_by_hand."""
    low, high = 0.0, 100.0 * sd
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if power_by_hand(n, middle, sd) < target else (low, middle)
    return (low + high) / 2


def sign_flip_by_hand(differences) -> float:
    """Two-sided exact sign-flip p: every one of the 2^n sign vectors, counted one by one."""
    d = [abs(x) for x in differences]
    observed = abs(sum(differences))
    vectors = list(itertools.product((1, -1), repeat=len(d)))
    extreme = sum(abs(sum(s * x for s, x in zip(signs, d))) >= observed - 1e-12 for signs in vectors)
    return extreme / len(vectors)


def simulated_power(n: int, effect: float, sd: float, draws: int = 200_000, seed: int = 0) -> float:
    """The share of simulated experiments (n normal paired differences) whose two-sided t-test rejects at 0.05."""
    d = np.random.default_rng(seed).normal(effect, sd, size=(draws, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    return float((np.abs(t) > stats.t.ppf(0.975, n - 1)).mean())
