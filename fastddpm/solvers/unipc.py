"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models") as a plan of per-step coefficient rows (``fastddpm.kernels.update_rows``).

The variant is the one diffusers' ``UniPCMultistepScheduler`` runs by default: data prediction
(``predict_x0``), B(h) = e^{−h} − 1 ("bh2"), UniC after every predictor, order ramp-up over the first
steps and ``lower_order_final``, the last step landing on x_0 (σ = 0, α = 1). With α = √ᾱ, σ = √(1−ᾱ),
λ = log(α/σ) and m_k = x̂_0[k], the predictor of order p from step k (h = λ_{k+1} − λ_k, r_i =
(λ_{k−i} − λ_k)/h) is

    x_{k+1} = (σ_{k+1}/σ_k)·x_k^c − α_{k+1}(e^{−h} − 1)·m_k − α_{k+1}·B(h)·Σ_{i=1…p−1} ρ_i·(m_{k−i} − m_k)/r_i

and the corrector at step k > 0 (the order p of step k−1's predictor, its h and its r_i) recomputes the
same update from the corrected x_{k−1}^c with m_k = x̂_0[k] as one more point (r = 1) and new weights ρ^c.

Folding it into one linear update. x_k is the *uncorrected* predicted state: the model is evaluated
there and x̂_0[k] = F·x_k + G·ε̂_k (F = 1/α_k, G = −σ_k/α_k) is taken from it. The corrector's base term,
(σ_k/σ_{k−1})·x_{k−1}^c − α_k(e^{−h} − 1)·m_{k−1}, is the very term the predictor of step k−1 used to
produce x_k, so the two differ only in their m-sums:

    x_k^c = x_k + Δ_k,   Δ_k = −α_k·B(h)·[Σ_{i=1…p−1} (ρ^c_i − ρ_i)·(m_{k−1−i} − m_{k−1})/r_i + ρ^c_p·(m_k − m_{k−1})]

which is linear in m_k … m_{k−p} alone (no state term). Substituting x_k^c into step k's predictor and
m_k = F·x_k + G·ε̂_k gives the rows X (= σ_{k+1}/σ_k), X0 (the weight of m_k) and HISTORY_j. The corrector of order 3 reaches m_{k−3}, so
order p uses p histories. The final output x_S is not corrected (no model evaluation follows it), and
since σ_S = 0 the last step discards the correction of x_{S−1} too: x_S = x̂_0[S−1].
"""

from __future__ import annotations

import math
import operator
from typing import Sequence

import numpy as np
import torch

from ..kernels.update_rows import HISTORY_ROWS, MAX_HISTORIES, NUM_ROWS, Row

__all__ = ["UNIPC_ORDERS", "unipc_coefficients", "unipc_histories"]

UNIPC_ORDERS = (1, 2, 3)


def _check_order(order: int) -> None:
    if isinstance(order, bool) or order not in UNIPC_ORDERS:
        raise ValueError(f"UniPC order must be one of {UNIPC_ORDERS}, got {order!r}")


def unipc_histories(order: int) -> int:
    """How many earlier x̂_0 the rows of ``order`` weigh: the corrector of order p reaches x̂_0[k−p]."""
    _check_order(order)
    return order


def _b(hh: float, n: int) -> np.ndarray:
    """The right-hand side b_1 … b_n of the UniPC order conditions for B(h) = e^{hh} − 1 (hh = −h):
    b_i = i!·hh·φ_{i+1}(hh)/B(h), with φ_1(z) = (e^z − 1)/z and φ_{i+1}(z) = (φ_i(z) − 1/i!)/z."""
    B = math.expm1(hh)
    g, fact, out = B / hh - 1.0, 1.0, []  # g = hh·φ_{i+1}(hh), starting at i = 1
    for i in range(1, n + 1):
        out.append(g * fact / B)
        fact *= i + 1
        g = g / hh - 1.0 / fact
    return np.array(out)


def _vandermonde_solve(r: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ρ with Σ_j ρ_j·r_j^{i−1} = b_i for i = 1 … len(r): the order conditions of the expansion."""
    return np.linalg.solve(np.vander(r, increasing=True).T, b[: len(r)])


def _predictor_rhos(r: np.ndarray, hh: float) -> np.ndarray:
    # One earlier point (order 2): b_1 = 1/2 + O(h), so ρ = 1/2 keeps the order; the paper and diffusers take it.
    if len(r) < 2:
        return np.full(len(r), 0.5)
    return _vandermonde_solve(r, _b(hh, len(r)))


def _corrector_rhos(r: np.ndarray, hh: float) -> np.ndarray:
    rks = np.append(r, 1.0)  # m_k itself sits at r = 1
    if len(rks) == 1:  # UniC-1: again b_1 = 1/2 + O(h), and the paper and diffusers take ρ = 1/2
        return np.array([0.5])
    return _vandermonde_solve(rks, _b(hh, len(rks)))


def unipc_coefficients(alphas_cumprod: torch.Tensor, timesteps: Sequence[int], order: int = 2) -> np.ndarray:
    """float64 (NUM_ROWS, S): UniPC-``order`` (bh2, data prediction) on ``timesteps`` (descending), rows by
    ``Row``; NOISE is zero. Matches diffusers' UniPCMultistepScheduler(solver_order=order,
    lower_order_final=True, final_sigmas_type="zero") with the corrector on at every step."""
    _check_order(order)
    try:
        seq = [operator.index(t) for t in timesteps]
    except TypeError:
        raise ValueError(f"timesteps must be integers, got {timesteps!r}") from None
    if len(seq) < 1:
        raise ValueError("UniPC needs at least 1 timestep, got none")
    # float64 whatever the caller's dtype or torch's default dtype: the rows are computed in double precision.
    abar = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64).numpy()
    if abar.ndim != 1:
        raise ValueError(f"alphas_cumprod must be 1-D, got shape {abar.shape}")
    if any(not 0 <= t < len(abar) for t in seq):
        raise ValueError(f"timesteps must lie in [0, {len(abar) - 1}], got {seq}")
    if any(a <= b for a, b in zip(seq, seq[1:])):  # equal λ would make h = 0
        raise ValueError(f"timesteps must be distinct and descending, got {seq}")

    S = len(seq)
    # Index S is the final state x_0: σ = 0, α = 1, λ = ∞ (e^{−h} = 0, so B(h) = −1).
    alpha = np.append(np.sqrt(abar[seq]), 1.0)
    sigma = np.append(np.sqrt(1.0 - abar[seq]), 0.0)
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    # Predictor order of step k: ramp up by one per step (only k earlier x̂_0 exist) and, with
    # lower_order_final, at most the S − k steps left (order 1 at the last, whatever S: unlike
    # DPM-Solver's scheduler, diffusers' UniPC applies it at any number of steps).
    p = [min(order, k + 1, S - k) for k in range(S)]

    coefs = np.zeros((NUM_ROWS, S))
    for k in range(S):
        F, G = 1.0 / alpha[k], -sigma[k] / alpha[k]
        ratio = sigma[k + 1] / sigma[k]
        # w[j]: the weight of m_{k−j} in x_{k+1} beside ratio·x_k; first the predictor's own terms.
        w = np.zeros(1 + MAX_HISTORIES)  # the corrector of order 3 reaches m_{k−3}
        h = lam[k + 1] - lam[k]
        hh, a_next = -h, alpha[k + 1]
        B = math.expm1(hh)
        r = (lam[k - np.arange(1, p[k])] - lam[k]) / h
        rho = _predictor_rhos(r, hh)
        w[0] = -a_next * B + a_next * B * np.sum(rho / r)  # bh2: e^{−h} − 1 = B(h)
        w[1 : p[k]] = -a_next * B * rho / r
        if k > 0:  # then the correction Δ_k of x_k, carried through ratio·x_k^c
            q = p[k - 1]
            h = lam[k] - lam[k - 1]
            hh, a_k = -h, alpha[k]
            B = math.expm1(hh)
            r = (lam[k - 1 - np.arange(1, q)] - lam[k - 1]) / h
            rho_c, rho_p = _corrector_rhos(r, hh), _predictor_rhos(r, hh)
            d = (rho_c[:-1] - rho_p) / r
            delta = np.zeros_like(w)
            delta[0] = -a_k * B * rho_c[-1]
            delta[1] = a_k * B * (rho_c[-1] + np.sum(d))
            delta[2 : q + 1] = -a_k * B * d
            w += ratio * delta
        coefs[Row.X, k] = ratio
        coefs[Row.X0, k] = w[0]
        coefs[Row.X0_FROM_X, k] = F
        coefs[Row.X0_FROM_EPS, k] = G
        coefs[list(HISTORY_ROWS), k] = w[1:]
    return coefs

