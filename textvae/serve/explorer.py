"""The explorer: a loaded model, its map and diagnostics, and the operations
the API offers, with the request limits checked.

Every model call goes through one lock, so one request at a time uses the
model in this process; others wait their turn. Decoding goes through
``textvae.operations`` (and so through the one generation engine).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor

from .. import operations
from ..errors import TextVAEError
from . import diagnostics
from .latent_map import LatentMap, MapUnavailable, build_map, read_map_sentences

log = logging.getLogger("textvae")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; ``textvae serve`` flags."""

    max_n: int = 32  # sentences per /api/sample and /api/complete
    max_steps: int = 20  # points on an interpolation path
    max_chars: int = 500  # characters per input sentence
    max_sentences: int = 64  # sentences, z rows or map points per request


@dataclass(frozen=True)
class MapSettings:
    """Where the map's sentences come from and how long building it may take."""

    data: Optional[str] = None  # --map-data; else the run's data.path
    size: int = 2000
    seconds: float = 60.0
    projection: str = "pca"
    seed: int = 0


class RequestError(Exception):
    """A request the explorer refuses; ``status`` is the HTTP status."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def _rounded(rows: Tensor, digits: int = 5) -> list[list[float]]:
    return [[round(v, digits) for v in row] for row in rows.tolist()]


class Explorer:
    def __init__(self, model, run_dir: str | Path, limits: Limits = Limits(),
                 map_settings: MapSettings = MapSettings()) -> None:
        """Builds the map (bounded by ``map_settings.seconds``) and the diagnostics."""
        self.model, self.run_dir, self.limits = model, Path(run_dir), limits
        self.lock = threading.Lock()
        self.map: Optional[LatentMap] = None
        self.map_reason = ""
        try:
            texts, source = read_map_sentences(model.config.data.path, self.run_dir, map_settings.data)
            self.map = build_map(model, texts, source, map_settings.size, map_settings.seed,
                                 map_settings.seconds, map_settings.projection, limits.max_chars)
            log.info("map: %d sentences from %s, %s, in %.1f s", len(self.map.sentences), source,
                     self.map.projection.name.upper(), self.map.seconds)
        except MapUnavailable as reason:
            self.map_reason = str(reason)
            log.warning("map: none (%s)", reason)
        self.evaluation = diagnostics.stored_evaluation(self.run_dir)
        self.statistics = diagnostics.latent_statistics(
            self.evaluation, self.map.mean if self.map else None, self.map.logvar if self.map else None)
        self.curves = diagnostics.training_curves(self.run_dir)

    # ------------------------------------------------------------- checks
    def _text(self, text: str, name: str) -> str:
        if not text.strip():
            raise RequestError(f"{name} is empty")
        if len(text) > self.limits.max_chars:
            raise RequestError(f"{name} has {len(text)} characters; the limit is {self.limits.max_chars}")
        return text

    def _texts(self, texts: list[str], name: str = "sentences") -> list[str]:
        if not texts:
            raise RequestError(f"{name} is empty: give at least one sentence")
        self._count(len(texts), name)
        return [self._text(t, f"{name}[{i}]") for i, t in enumerate(texts)]

    def _count(self, count: int, name: str) -> None:
        if count > self.limits.max_sentences:
            raise RequestError(f"{name} has {count} rows; the limit is {self.limits.max_sentences}")

    def _within(self, value: int, name: str, low: int, high: int) -> int:
        if not low <= value <= high:
            raise RequestError(f"{name} must be between {low} and {high}, got {value}")
        return value

    def _latent_space(self) -> None:
        if self.model.latent_dim == 0:
            raise RequestError("this model is a language model (latent_dim=0): it has no latent space")

    def _z(self, rows: list[list[float]], name: str = "z") -> Tensor:
        self._latent_space()
        if not rows:
            raise RequestError(f"{name} is empty: give at least one row")
        self._count(len(rows), name)
        width = self.model.latent_dim
        for i, row in enumerate(rows):
            if len(row) != width:
                raise RequestError(f"{name}[{i}] has {len(row)} numbers; this model's latent_dim is {width}")
        z = torch.tensor(rows, dtype=torch.float32)
        if not bool(torch.isfinite(z).all()):
            raise RequestError(f"{name} holds a number that is not finite")
        return z

    def _map(self) -> LatentMap:
        if self.map is None:
            raise RequestError(f"no map for this run: {self.map_reason}", status=409)
        return self.map

    def _call(self, function, *args, **kwargs):
        """Run one model call under the lock; the model's own input errors become 422s."""
        with self.lock:
            try:
                return function(self.model, *args, **kwargs)
            except TextVAEError as error:
                raise RequestError(str(error)) from None

    def _means(self, sentences: Optional[list[str]], z: Optional[list[list[float]]]) -> Tensor:
        """Latent points given as sentences (posterior means) or as z rows, (N, D)."""
        if (sentences is None) == (z is None):
            raise RequestError("give either sentences or z")
        if z is not None:
            return self._z(z)
        self._latent_space()
        return self._call(operations.encode, self._texts(sentences)).mean.float().cpu()

    def _decode(self, z: Tensor, decoding: dict[str, Any]) -> list[str]:
        return self._call(operations.decode, z, **decoding)

    # --------------------------------------------------------- operations
    def info(self) -> dict[str, Any]:
        model = self.model
        tokenizer = model.tokenizer
        latent_map = {"available": self.map is not None, "reason": self.map_reason}
        if self.map:
            latent_map.update(method=self.map.projection.name, sentences=len(self.map.sentences),
                              source=self.map.source, explained_variance=self.map.projection.explained)
        return {
            "run": str(self.run_dir), "config": model.config.to_dict(), "latent_dim": model.latent_dim,
            "parameters": sum(p.numel() for p in model.parameters()),
            "tokenizer": {"source": tokenizer.source, "vocab_size": tokenizer.vocab_size,
                          "specials": tokenizer.specials, "words": len(tokenizer.words)},
            "evaluation": self.evaluation, "latent": self.statistics, "map": latent_map,
            "curves": self.curves, "limits": asdict(self.limits),
        }

    def encode(self, sentences: list[str]) -> dict[str, Any]:
        self._latent_space()
        q = self._call(operations.encode, self._texts(sentences))
        return {"mean": _rounded(q.mean), "logvar": _rounded(q.logvar)}

    def decode(self, z: list[list[float]], decoding: dict[str, Any]) -> dict[str, Any]:
        return {"sentences": self._decode(self._z(z), decoding)}

    def interpolate(self, a: str, b: str, steps: int, method: str, decoding: dict[str, Any]) -> dict[str, Any]:
        self._latent_space()
        self._within(steps, "steps", 2, self.limits.max_steps)
        means = self._call(operations.encode, [self._text(a, "a"), self._text(b, "b")]).mean.float().cpu()
        t = torch.linspace(0, 1, steps)
        if method == "slerp":
            z = operations.slerp(means[0], means[1], t)
        else:
            z = torch.lerp(means[0].expand(steps, -1), means[1].expand(steps, -1), t.unsqueeze(1))
        return {"sentences": self._decode(z, decoding), "z": _rounded(z)}

    def sample(self, n: int, decoding: dict[str, Any], prior_temperature: Optional[float] = None) -> dict[str, Any]:
        self._within(n, "n", 1, self.limits.max_n)
        return {"sentences": self._call(operations.sample, n, prior_temperature=prior_temperature, **decoding)}

    def complete(self, prefix: str, n: int, decoding: dict[str, Any]) -> dict[str, Any]:
        self._within(n, "n", 1, self.limits.max_n)
        return {"sentences": self._call(operations.complete, self._text(prefix, "prefix"), n, **decoding)}

    def training_map(self) -> dict[str, Any]:
        if self.map is None:
            return {"available": False, "reason": self.map_reason, "points": [], "sentences": []}
        return {"available": True, "method": self.map.projection.name, "source": self.map.source,
                "points": _rounded(self.map.points, 4), "sentences": self.map.sentences}

    def project(self, sentences: Optional[list[str]], z: Optional[list[list[float]]]) -> dict[str, Any]:
        latent_map = self._map()
        return {"points": _rounded(latent_map.projection.transform(self._means(sentences, z)), 4)}

    def unproject(self, points: list[list[float]], decoding: dict[str, Any]) -> dict[str, Any]:
        latent_map = self._map()
        if not points:
            raise RequestError("points is empty: give at least one [x, y]")
        self._count(len(points), "points")
        if any(len(p) != 2 for p in points):
            raise RequestError("each point is [x, y]")
        flat = torch.tensor(points, dtype=torch.float32)
        if not bool(torch.isfinite(flat).all()):
            raise RequestError("points holds a number that is not finite")
        z = latent_map.projection.inverse(flat)
        return {"sentences": self._decode(z, decoding), "z": _rounded(z)}

    def neighbours(self, sentences: Optional[list[str]], z: Optional[list[list[float]]], k: int) -> dict[str, Any]:
        """The k training sentences of the map sample nearest to each point (Euclidean, in z)."""
        latent_map = self._map()
        self._within(k, "k", 1, min(self.limits.max_n, len(latent_map.sentences)))
        distances = torch.cdist(self._means(sentences, z), latent_map.mean)  # (N, M)
        nearest = distances.topk(k, dim=1, largest=False)
        return {"sentences": [[latent_map.sentences[j] for j in row] for row in nearest.indices.tolist()],
                "distances": _rounded(nearest.values, 4),
                "points": [_rounded(latent_map.points[row], 4) for row in nearest.indices]}

    def arithmetic(self, fields: dict[str, Any], decoding: dict[str, Any]) -> dict[str, Any]:
        """z(a) - z(b) + z(c), or sentence + strength * (mean z(positive) - mean z(negative))."""
        self._latent_space()
        analogy = [fields.get(k) for k in ("a", "b", "c")]
        attribute = [fields.get(k) for k in ("sentence", "positive", "negative")]
        if all(v is not None for v in analogy) and all(v is None for v in attribute):
            means = self._call(operations.encode, [self._text(t, n) for t, n in zip(analogy, "abc")]).mean
            z = (means[0] - means[1] + means[2]).unsqueeze(0)
        elif all(v is not None for v in attribute) and all(v is None for v in analogy):
            sentence, positive, negative = attribute
            strength = fields.get("strength", 1.0)
            if abs(strength) > 10:
                raise RequestError(f"strength must be between -10 and 10, got {strength}")
            self._count(len(positive) + len(negative), "positive and negative together")
            means = self._call(operations.encode, [self._text(sentence, "sentence"),
                                                   *self._texts(positive, "positive"),
                                                   *self._texts(negative, "negative")]).mean
            direction = means[1: 1 + len(positive)].mean(0) - means[1 + len(positive):].mean(0)
            z = (means[0] + strength * direction).unsqueeze(0)
        else:
            raise RequestError("give either a, b and c, or sentence, positive and negative (with strength)")
        z = z.float().cpu()
        return {"sentences": self._decode(z, decoding), "z": _rounded(z)}
