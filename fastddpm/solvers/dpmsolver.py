"""DPM-Solver++ (Lu et al. 2022), multistep, data prediction: orders 2 (2M) and 3 (3M).

With α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ), h = λ_next − λ_s and φ = e^{−h} − 1, a step from s is

    x_next = (σ_next/σ_s)·x − α_next·φ·D

where D = x̂_0 at first order, D = (1 + 1/(2r))·x̂_0 − x̂_0[k−1]/(2r) at second order (r = h_prev/h), and
at third order x_next = (σ_next/σ_s)·x − α_next·φ·D0 + α_next·(φ/h + 1)·D1 − α_next·((φ + h)/h² − ½)·D2
from the divided differences of the last three x̂_0. Steps follow diffusers' DPMSolverMultistepScheduler
(lower_order_final, final σ = 0): first order at the first and the last step, second order at the
second step (and, at order 3, at the second-to-last when S < 15), the solver's order elsewhere.
Every step is x_next = X·x + X0·x̂_0 + Σ_j HISTORY_j·x̂_0[k−j] with x̂_0 = (x − σ_s·ε̂)/α_s.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from ..kernels.update_rows import Row
from ._schedule import alpha_sigma, empty_rows, float64_alphas_cumprod

__all__ = ["ORDERS", "dpmsolver_coefficients", "dpmsolver_histories"]

ORDERS = (2, 3)


def dpmsolver_histories(order: int) -> int:
    return order - 1


def dpmsolver_coefficients(alphas_cumprod: torch.Tensor | np.ndarray, timesteps: Sequence[int], order: int = 2) -> np.ndarray:
    """float64 (NUM_ROWS, S): the rows of DPM-Solver++(2M) or (3M) over ``timesteps``."""
    if order not in ORDERS:
        raise ValueError(f"DPM-Solver++ order must be 2 or 3, got {order}")
    abar = float64_alphas_cumprod(alphas_cumprod)
    alpha, sigma = alpha_sigma(abar, timesteps)
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]
    S = len(timesteps)
    rows = empty_rows(S, alpha, sigma)
    for i in range(S):
        if i + 1 < S:
            h = lam[i + 1] - lam[i]
            phi = math.expm1(-h)
            ratio, a_next = sigma[i + 1] / sigma[i], alpha[i + 1]
        else:  # the last step lands on x_0: σ = 0, α = 1, e^{−h} = 0
            h, phi, ratio, a_next = math.inf, -1.0, 0.0, 1.0
        c_prev2 = 0.0
        if i == 0 or i == S - 1:
            c_x0, c_prev = -a_next * phi, 0.0
        elif order == 2 or i == 1 or (i == S - 2 and S < 15):
            r = (lam[i] - lam[i - 1]) / h
            c_x0, c_prev = -a_next * phi * (1 + 1 / (2 * r)), a_next * phi / (2 * r)
        else:  # third order: D1_0 = (m0 − m1)/r0, D1_1 = (m1 − m2)/r1, then D1 and D2 from them
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            c1 = a_next * (phi / h + 1)
            c2 = -a_next * ((phi + h) / h**2 - 0.5)
            k0 = c1 * (1 + r0 / (r0 + r1)) + c2 / (r0 + r1)  # the weight of D1_0 in c1·D1 + c2·D2
            k1 = -c1 * r0 / (r0 + r1) - c2 / (r0 + r1)  # the weight of D1_1
            c_x0, c_prev, c_prev2 = -a_next * phi + k0 / r0, -k0 / r0 + k1 / r1, -k1 / r1
        rows[Row.X, i] = ratio
        rows[Row.X0, i] = c_x0
        rows[Row.HISTORY1, i] = c_prev
        rows[Row.HISTORY2, i] = c_prev2
    return rows
