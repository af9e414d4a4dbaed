"""The 2-D map of the latent space.

A seeded sample of the training sentences is encoded once (posterior means),
and a projection to two dimensions is fitted on those means: PCA, or UMAP
(McInnes et al. 2018) where ``umap-learn`` is installed. New sentences and
latent codes go through the same fitted projection, so they land on the same
map; a point of the map maps back to a latent code (the PCA plane through the
mean, or UMAP's inverse transform).
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from ..errors import TextVAEError
from ..operations import encode

log = logging.getLogger("textvae")

ENCODE_BATCH = 128


class MapUnavailable(Exception):
    """No map can be drawn; the message says why (shown on the page)."""


class PCAProjection:
    """The plane of the two principal components of the means (N, D)."""

    name = "pca"

    def __init__(self, means: Tensor) -> None:
        means = means.double()
        self.center = means.mean(0)  # (D,)
        _, singular, vh = torch.linalg.svd(means - self.center, full_matrices=False)
        components = vh[:2]  # (<=2, D)
        # A sign per component, so that the same model always draws the same map.
        largest = components.abs().argmax(1)
        components = components * components.gather(1, largest.unsqueeze(1)).sign()
        if len(components) < 2:  # a 1-d latent: the map is a line
            components = torch.cat([components, torch.zeros(2 - len(components), means.shape[1]).double()])
        self.components = components  # (2, D)
        total = float(singular.pow(2).sum()) or 1.0
        self.explained = [float(s) ** 2 / total for s in singular[:2]]

    def transform(self, z: Tensor) -> Tensor:
        """(N, D) -> (N, 2)"""
        return ((z.double().cpu() - self.center) @ self.components.T).float()

    def inverse(self, points: Tensor) -> Tensor:
        """(N, 2) -> (N, D), on the plane through the mean."""
        return (self.center + points.double() @ self.components).float()


class UMAPProjection:
    """UMAP's embedding of the means, seeded; needs ``umap-learn``."""

    name = "umap"

    def __init__(self, means: Tensor, seed: int = 0) -> None:
        try:
            import umap
        except ImportError:
            raise TextVAEError("--projection umap needs umap-learn (pip install umap-learn)") from None
        self.reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(means) - 1))
        self.reducer.fit(means.double().cpu().numpy())
        self.explained: list[float] = []

    def transform(self, z: Tensor) -> Tensor:
        return torch.as_tensor(self.reducer.transform(z.double().cpu().numpy())).float()

    def inverse(self, points: Tensor) -> Tensor:
        return torch.as_tensor(self.reducer.inverse_transform(points.double().cpu().numpy())).float()


@dataclass
class LatentMap:
    """The encoded sample: sentences, posterior means and logvars (N, D), 2-D points (N, 2)."""

    sentences: list[str]
    mean: Tensor
    logvar: Tensor
    points: Tensor
    projection: PCAProjection | UMAPProjection
    source: str
    seconds: float


def read_map_sentences(config_data_path: str, run_dir: Path, map_data: Optional[str]) -> tuple[list[str], str]:
    """Sentences to draw the map from, and where they came from.

    ``map_data`` (a file, one sentence a line, or a data folder) wins; else the
    training split of the run's ``data.path``, looked up as given and then
    beside the run folder. Raises MapUnavailable when there is none.
    """
    from ..data import read_texts

    if map_data:
        path = Path(map_data)
        if not path.exists():
            raise TextVAEError(f"--map-data {map_data} does not exist")
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8").splitlines(), str(path)
            except UnicodeDecodeError:
                raise TextVAEError(f"--map-data {map_data} is not UTF-8 text") from None
        return read_texts(str(path), ["train"])["train"], f"{path} (train split)"
    if not config_data_path:
        raise MapUnavailable("the run's config.json records no data.path; start with --map-data FILE")
    candidates = [config_data_path]
    if not config_data_path.startswith("hf:") and not Path(config_data_path).is_absolute():
        candidates.append(str(run_dir / config_data_path))
    for candidate in candidates:
        if candidate.startswith("hf:") or Path(candidate).exists():
            try:
                return read_texts(candidate, ["train"])["train"], f"{candidate} (train split)"
            except Exception as error:  # offline hub data, unreadable files: the map says why
                raise MapUnavailable(f"cannot read the training data {candidate}: {error}") from None
    raise MapUnavailable(f"the training data {config_data_path} (data.path in config.json) is not here; "
                         "start with --map-data FILE")


def encodable(model, texts: list[str], max_chars: int) -> list[str]:
    """The texts the encoder can read: not empty, not only unknown words."""
    tok = model.tokenizer
    kept = []
    for text in texts:
        if not text.strip() or len(text) > max_chars:
            continue
        ids = tok.encode(text)
        if ids and any(i != tok.unk_id for i in ids):
            kept.append(text)
    return kept


def build_map(model, texts: list[str], source: str, size: int, seed: int, seconds: float,
              projection: str = "pca", max_chars: int = 500) -> LatentMap:
    """Encode a seeded sample of ``size`` distinct texts, stopping after
    ``seconds`` with what was encoded by then, and fit the projection."""
    start = time.perf_counter()
    if model.latent_dim == 0:
        raise MapUnavailable("this model is a language model (latent_dim=0): it has no latent space")
    order = sorted(set(texts))
    random.Random(seed).shuffle(order)
    chosen = encodable(model, order[: 2 * size], max_chars)[:size]
    means, logvars, done = [], [], []
    for first in range(0, len(chosen), ENCODE_BATCH):
        if time.perf_counter() - start > seconds:
            log.warning("map: stopped after %.0f s with %d sentences (--map-seconds)", seconds, len(done))
            break
        part = chosen[first: first + ENCODE_BATCH]
        q = encode(model, part)
        means.append(q.mean.float().cpu())
        logvars.append(q.logvar.float().cpu())
        done.extend(part)
    if len(done) < 3:
        raise MapUnavailable(f"{source} gave {len(done)} sentences the model can read; the map needs at least 3")
    mean, logvar = torch.cat(means), torch.cat(logvars)
    fitted = UMAPProjection(mean, seed) if projection == "umap" else PCAProjection(mean)
    points = fitted.transform(mean)
    return LatentMap(done, mean, logvar, points, fitted, source, time.perf_counter() - start)
