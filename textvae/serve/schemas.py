"""The JSON bodies the API accepts: strict types, no unknown keys.

Types are checked here (a string where a number belongs is refused, not
coerced); the limits, which are command-line flags, are checked by the
``Explorer``. Every field's meaning is the API's, in ``app.py``.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

Strategy = Literal["greedy", "sample", "beam"]


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class Decoding(Body):
    """How sentences are decoded from z: greedy unless asked otherwise."""

    strategy: Strategy = "greedy"
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: Optional[int] = None
    known_words: Optional[bool] = None  # only the training corpus's words; None: the run's model.known_words


class Sentences(Body):
    sentences: list[str]


class LatentsOrSentences(Body):
    """Points in the latent space given as sentences (their posterior means) or as z."""

    sentences: Optional[list[str]] = None
    z: Optional[list[list[float]]] = None


class DecodeRequest(Decoding):
    # allow_inf_nan does not reach into nested lists: z's finiteness is checked by the Explorer.
    z: list[list[float]]


class InterpolateRequest(Decoding):
    a: str
    b: str
    steps: int = 7
    method: Literal["linear", "slerp"] = "slerp"


class SampleRequest(Decoding):
    strategy: Optional[Strategy] = None  # None: the run's model.sample_strategy
    n: int = 8
    prior_temperature: Optional[float] = Field(None, gt=0)  # z's spread around the prior's modes (prior.py)


class CompleteRequest(Decoding):
    strategy: Optional[Strategy] = None
    prefix: str
    n: int = 4


class NeighboursRequest(LatentsOrSentences):
    k: int = 5


class MapDecodeRequest(Decoding):
    points: list[list[float]]


class ArithmeticRequest(Decoding):
    """Either the analogy z(a) - z(b) + z(c), or an attribute vector:
    sentence + strength * (mean z of ``positive`` - mean z of ``negative``)."""

    a: Optional[str] = None
    b: Optional[str] = None
    c: Optional[str] = None
    sentence: Optional[str] = None
    positive: Optional[list[str]] = None
    negative: Optional[list[str]] = None
    strength: float = 1.0
