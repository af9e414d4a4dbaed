"""Priors p(z) over the latent: the standard normal the VAE is trained with,
and a second-stage Gaussian mixture fitted to the aggregate posterior.

A latent that holds a whole sentence (a KL of tens of nats) leaves holes
under N(0, I): regions the prior samples from but that no sentence encodes to,
which decode to word salad. Two-stage VAEs (Dai & Wipf 2019, "Diagnosing and
Enhancing VAE Models") and regularised autoencoders with ex-post density
estimation (Ghosh et al. 2020, "From Variational to Deterministic
Autoencoders") fit a second density to the codes of the training data and
sample from that instead. Two are here, both fitted after training
(`textvae fit-prior RUN`) and used for sampling, completion and the
importance-weighted NLL (where log p(z) is then their density, so the NLL is
that of the two-stage model):

- ``model.prior=gmm``: a full-covariance Gaussian mixture over the posterior
  means, fitted by EM (Dempster et al. 1977). A few dozen broad components
  smooth over the codes, so they still sample between sentences.
- ``model.prior=exemplar``: the aggregate posterior itself,
  q(z) = (1/N) sum_n q(z|x_n), over K training sentences drawn at random: each
  a component N(mu_n, diag(sigma_n^2)) with the posterior's own mean and
  variance. This is the VampPrior of Tomczak & Welling 2018 with real
  sentences as its pseudo-inputs, i.e. the exemplar prior of Norouzi et al.
  2020 ("Exemplar VAE"): samples are the decoder's readings of the
  neighbourhood of a training sentence's code, so they read like the corpus,
  and many are its sentences given back (measure how many).

All priors offer ``log_prob(z)`` ((..., D) -> (...), nats) and
``sample(n, generator, temperature=T)`` ((n, D)); their state is buffers,
saved with the model's weights. A temperature T < 1 draws each Gaussian's
noise scaled by T, i.e. from N(mu, T^2 Sigma), the reduced-temperature
sampling of Kingma & Dhariwal 2018 ("Glow"): samples stay nearer
the modes, trading diversity for fidelity; for a mixture it scales every
component (the weights are kept).
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor, nn

from .errors import TextVAEError
from .latent import LOG_2PI, standard_normal_log_prob


def check_temperature(value: float) -> None:
    """A prior temperature is a finite number > 0 (one clear error otherwise)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise TextVAEError(f"the prior temperature must be a finite number > 0, not {value!r}")


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: Tensor) -> Tensor:
        return standard_normal_log_prob(z)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device=None,
               temperature: float = 1.0) -> Tensor:
        check_temperature(temperature)
        return temperature * torch.randn(n, self.latent_dim, generator=generator, device=device)


class FittedPrior(nn.Module):
    """A prior fitted after training (`textvae fit-prior`): a ``fitted`` flag
    buffer, saved with the weights, and one clear error when used before."""

    NAME, FIT = "", ""  # how the error names it, and the command that fits it

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("fitted", torch.zeros(()))  # 1 once fit() has run

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise TextVAEError(f"the model's {self.NAME} is not fitted yet: run `{self.FIT}`")


class GaussianMixturePrior(FittedPrior):
    """p(z) = sum_k w_k N(z; mu_k, L_k L_k^T), K components with full covariance."""

    NAME, FIT = "mixture prior (model.prior=gmm)", "textvae fit-prior RUN"

    def __init__(self, latent_dim: int, components: int) -> None:
        super().__init__()
        self.latent_dim, self.components = latent_dim, components
        self.register_buffer("log_weights", torch.full((components,), -math.log(components)))  # (K,)
        self.register_buffer("means", torch.zeros(components, latent_dim))  # (K, D)
        self.register_buffer("scale_tril", torch.eye(latent_dim).repeat(components, 1, 1))  # (K, D, D)

    def log_prob(self, z: Tensor) -> Tensor:
        self._check_fitted()
        return mixture_log_prob(z, self.log_weights, self.means, self.scale_tril)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device=None,
               temperature: float = 1.0) -> Tensor:
        check_temperature(temperature)
        self._check_fitted()
        device = device or self.means.device
        which = torch.multinomial(self.log_weights.exp().to(device), n, replacement=True, generator=generator)  # (n,)
        eps = torch.randn(n, self.latent_dim, 1, generator=generator, device=device)
        return self.means[which] + temperature * (self.scale_tril[which] @ eps).squeeze(-1)

    @torch.no_grad()
    def fit(self, points: Tensor, iterations: int = 100, tolerance: float = 1e-4,
            generator: Optional[torch.Generator] = None) -> dict[str, float]:
        """EM on ``points`` (N, D), e.g. the posterior means of the training
        sentences. Returns the final mean log-likelihood per point (nats)."""
        log_weights, means, scale_tril, figures = fit_gaussian_mixture(points, self.components, iterations,
                                                                       tolerance, generator)
        self.log_weights.copy_(log_weights)
        self.means.copy_(means)
        self.scale_tril.copy_(scale_tril)
        self.fitted.fill_(1.0)
        return figures


class ExemplarPrior(FittedPrior):
    """p(z) = (1/K) sum_k N(z; mu_k, diag(exp(logvar_k))): the posteriors of K
    training sentences (the aggregate posterior; module docstring)."""

    NAME, FIT = "exemplar prior (model.prior=exemplar)", "textvae fit-prior RUN --kind exemplar"

    def __init__(self, latent_dim: int, components: int) -> None:
        super().__init__()
        self.latent_dim, self.components = latent_dim, components
        self.register_buffer("means", torch.zeros(components, latent_dim))  # (K, D)
        self.register_buffer("logvars", torch.zeros(components, latent_dim))  # (K, D)

    def log_prob(self, z: Tensor) -> Tensor:
        self._check_fitted()
        return diagonal_mixture_log_prob(z, self.means, self.logvars)

    def sample(self, n: int, generator: Optional[torch.Generator] = None, device=None,
               temperature: float = 1.0) -> Tensor:
        device = device or self.means.device
        which = torch.randint(self.components, (n,), generator=generator, device=device)  # (n,)
        return self._draw(which, generator, temperature)

    def sample_each(self, generator: Optional[torch.Generator] = None, device=None,
                    temperature: float = 1.0) -> Tensor:
        """One draw from every component, (K, D): a stratified sample of the
        prior (its components are equally weighted), which a search for the
        few sentences that fit a condition (operations.complete) cannot miss."""
        return self._draw(torch.arange(self.components, device=device or self.means.device), generator, temperature)

    def _draw(self, which: Tensor, generator: Optional[torch.Generator], temperature: float) -> Tensor:
        """mu_k + T sigma_k eps for each component index k of ``which`` (n,) -> (n, D)."""
        check_temperature(temperature)
        self._check_fitted()
        eps = torch.randn(len(which), self.latent_dim, generator=generator, device=which.device)
        return self.means[which] + temperature * torch.exp(0.5 * self.logvars[which]) * eps

    @torch.no_grad()
    def fit(self, means: Tensor, logvars: Tensor) -> dict[str, float]:
        """Take the K posteriors given, means and log-variances (K, D)."""
        if means.shape != self.means.shape or logvars.shape != self.logvars.shape:
            raise TextVAEError(f"an exemplar prior of {self.components} components in {self.latent_dim} dimensions "
                               f"needs means and log-variances of shape {tuple(self.means.shape)}, not "
                               f"{tuple(means.shape)} and {tuple(logvars.shape)}")
        self.means.copy_(means)
        self.logvars.copy_(logvars)
        self.fitted.fill_(1.0)
        return {"components": self.components, "points": self.components,
                "log_likelihood": float(self.log_prob(means).mean())}


PRIORS = {"normal": StandardNormalPrior, "gmm": GaussianMixturePrior, "exemplar": ExemplarPrior}
FITTED_PRIORS = ("gmm", "exemplar")  # the kinds `textvae fit-prior` fits


def build_prior(kind: str, latent_dim: int, components: int) -> nn.Module:
    if kind in FITTED_PRIORS:
        return PRIORS[kind](latent_dim, components)
    return StandardNormalPrior(latent_dim)


def diagonal_mixture_log_prob(z: Tensor, means: Tensor, logvars: Tensor, rows: Optional[int] = None) -> Tensor:
    """log (1/K) sum_k N(z; mu_k, diag(exp(logvar_k))). z (..., D) -> (...).
    The squared distances come from matrix products, in float64 so that the
    expansion |z|^2 / v - 2 z mu / v + |mu|^2 / v keeps its precision:
    sum_d (z_d - mu_kd)^2 / v_kd for z (n, D) is (n, K)."""
    flat = z.reshape(-1, z.shape[-1]).to(torch.float64)  # (N, D)
    means, logvars = means.to(torch.float64), logvars.to(torch.float64)
    precision = torch.exp(-logvars)  # (K, D)
    shift = means * precision  # (K, D)
    constant = (means * shift).sum(-1) + logvars.sum(-1) + means.shape[1] * LOG_2PI  # (K,)
    rows = rows or max(1, 2**24 // len(means))  # (rows, K) float64 blocks of at most 128 MB
    out = []
    for start in range(0, len(flat), rows):
        x = flat[start:start + rows]  # (n, D)
        distance = (x * x) @ precision.T - 2.0 * (x @ shift.T)  # (n, K), constant aside
        out.append(torch.logsumexp(-0.5 * (distance + constant), dim=1) - math.log(len(means)))
    result = torch.cat(out) if out else flat.new_zeros(0)
    return result.float().reshape(z.shape[:-1])


def mixture_log_prob(z: Tensor, log_weights: Tensor, means: Tensor, scale_tril: Tensor) -> Tensor:
    """log sum_k w_k N(z; mu_k, L_k L_k^T). z (..., D) -> (...)."""
    flat = z.reshape(-1, z.shape[-1]).to(means.dtype)  # (N, D)
    joint = component_log_probs(flat, means, scale_tril) + log_weights  # (N, K)
    return torch.logsumexp(joint, dim=1).reshape(z.shape[:-1])


def component_log_probs(x: Tensor, means: Tensor, scale_tril: Tensor, rows: int = 2048) -> Tensor:
    """log N(x_n; mu_k, L_k L_k^T) for x (N, D) -> (N, K), as one matrix
    product per chunk of rows: with P_k = L_k^-1, the Mahalanobis distance is
    |P_k x - P_k mu_k|^2."""
    k, dim = means.shape
    eye = torch.eye(dim, dtype=means.dtype, device=means.device).expand(k, dim, dim)
    precision = torch.linalg.solve_triangular(scale_tril, eye, upper=False)  # (K, D, D)
    shift = (precision @ means.unsqueeze(-1)).squeeze(-1)  # (K, D)
    constant = 2.0 * torch.log(torch.diagonal(scale_tril, dim1=1, dim2=2)).sum(-1) + dim * LOG_2PI  # (K,)
    flat_precision = precision.reshape(k * dim, dim)  # (K*D, D)
    out = []
    for start in range(0, len(x), rows):
        y = (x[start:start + rows] @ flat_precision.T).reshape(-1, k, dim) - shift  # (n, K, D)
        out.append(-0.5 * (y.pow(2).sum(-1) + constant))
    return torch.cat(out) if out else x.new_zeros(0, k)


def fit_gaussian_mixture(points: Tensor, components: int, iterations: int = 100, tolerance: float = 1e-4,
                         generator: Optional[torch.Generator] = None, rows: int = 2048):
    """EM for a full-covariance Gaussian mixture (Dempster et al. 1977), in
    float64 on centred data, k-means++ seeds (Arthur & Vassilvitskii 2007).
    Each covariance gets 1e-4 of the data's mean variance on its diagonal so
    that no component collapses onto a point. Stops when the mean
    log-likelihood gains less than ``tolerance`` (relative) in a step.
    Returns (log_weights (K,), means (K, D), scale_tril (K, D, D), figures)."""
    x = points.detach().to(torch.float64).cpu()
    n, dim = x.shape
    if n < 2:
        raise TextVAEError("fitting a mixture prior needs at least 2 sentences")
    centre = x.mean(0)
    x = x - centre
    k = min(components, n)
    floor = 1e-4 * float(x.var(0).mean()) + 1e-8
    eye = torch.eye(dim, dtype=torch.float64)
    means = _kmeans_plus_plus(x, k, generator)
    covariance = torch.cov(x.T).reshape(dim, dim) + floor * eye
    scale_tril = torch.linalg.cholesky(covariance).expand(k, dim, dim).clone()
    log_weights = torch.full((k,), -math.log(k), dtype=torch.float64)
    previous, steps, likelihood = -math.inf, 0, -math.inf
    for steps in range(1, iterations + 1):
        # E step: responsibilities (N, K).
        joint = component_log_probs(x, means, scale_tril, rows) + log_weights
        total = torch.logsumexp(joint, dim=1, keepdim=True)  # (N, 1)
        likelihood = float(total.mean())
        resp = (joint - total).exp()
        # M step: weights, means, covariances from responsibility-weighted moments.
        counts = resp.sum(0) + 1e-10  # (K,)
        log_weights = torch.log(counts / n)
        means = (resp.T @ x) / counts.unsqueeze(1)  # (K, D)
        second = torch.zeros(k, dim, dim, dtype=torch.float64)
        for start in range(0, n, rows):
            chunk, weights = x[start:start + rows], resp[start:start + rows]  # (n, D), (n, K)
            second += ((weights.T.unsqueeze(-1) * chunk).transpose(1, 2) @ chunk)  # (K, D, D)
        covariance = second / counts.view(k, 1, 1) - means.unsqueeze(2) * means.unsqueeze(1) + floor * eye
        scale_tril = torch.linalg.cholesky(0.5 * (covariance + covariance.transpose(1, 2)))
        if likelihood - previous < tolerance * max(1.0, abs(likelihood)):
            break
        previous = likelihood
    figures = {"log_likelihood": likelihood, "iterations": steps, "components": k, "points": n}
    return log_weights.float(), (means + centre).float(), scale_tril.float(), figures


def _kmeans_plus_plus(x: Tensor, k: int, generator: Optional[torch.Generator]) -> Tensor:
    """k seeds, each drawn with probability proportional to its squared distance to the nearest seed so far."""
    first = int(torch.randint(len(x), (1,), generator=generator))
    seeds = [x[first]]
    nearest = (x - seeds[0]).pow(2).sum(1)
    for _ in range(1, k):
        chosen = int(torch.multinomial((nearest / nearest.sum()).float(), 1, generator=generator))
        seeds.append(x[chosen])
        nearest = torch.minimum(nearest, (x - x[chosen]).pow(2).sum(1))
    return torch.stack(seeds)
