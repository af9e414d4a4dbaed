"""A long importance-weighted NLL that survives being stopped.

500 samples over the Penn Treebank test split take more than an hour on two
CPU cores. ``IWJournal`` keeps what is done, the per-sentence estimates so far
and the sampler's random state, in a file beside the run (at most every
``every`` seconds and once at the end), so that the same ``textvae eval``,
run again after a stop, goes on where it was and gives the same figures as a
run without a break. The file is bound to everything the estimate depends on
(the weights, the split's token ids, the settings, the kind of device); any
difference, or a file that cannot be read, starts the estimate afresh. The
command removes it once the results are written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from ..errors import TextVAEError
from ..run_folder import replacing

log = logging.getLogger("textvae")
SAVE_EVERY = 60.0  # seconds between saves: what a stop can lose


def fingerprint(model: nn.Module, data: bytes) -> str:
    """sha256 of the model's weights and buffers and of the data (a split's token ids, the images)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-d too
    digest.update(data)
    return digest.hexdigest()


def journal_path(results: Path) -> Path:
    """The journal beside an evaluation's results file: eval_test.json -> eval_test.partial.pt."""
    return results.with_name(f"{results.stem}.partial.pt")


class IWJournal:
    def __init__(self, path: Path, every: float = SAVE_EVERY, clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.every, self.clock = path, every, clock
        self.key = ""
        self.pieces: list[Tensor] = []  # -log p(x) of each batch done, (B,) float64
        self.generator_state: Optional[Tensor] = None  # the sampler's state after them
        self.last = clock()

    def open(self, model: nn.Module, data: bytes, settings: dict[str, Any]) -> int:
        """Bind the journal to the model, the data and the settings (with the
        kind of device); the number of batches an earlier run of the same did
        (0 where there is none)."""
        self.key = json.dumps({"model_and_data": fingerprint(model, data), **settings}, sort_keys=True)
        if not self.path.exists():
            return 0
        try:
            saved = torch.load(self.path, weights_only=True)
            pieces, state = list(saved["pieces"]), saved["generator"]
        except Exception as error:  # torn, foreign or from another version: not worth an error
            log.info(f"not resuming from {self.path} ({type(error).__name__}): starting afresh")
            return 0
        if saved.get("key") != self.key:
            log.info(f"{self.path} is from other weights, data or settings: starting afresh")
            return 0
        self.pieces, self.generator_state = pieces, state
        log.info(f"resuming the importance-weighted NLL from {self.path}: {len(pieces)} batches done")
        return len(pieces)

    def save(self, pieces: list[Tensor], generator_state: Tensor, final: bool = False) -> bool:
        """Keep ``pieces`` and the sampler's state after them, if ``every``
        seconds have passed (or ``final``); whether it was written."""
        if not self.key or not (final or self.clock() - self.last >= self.every):
            return False
        try:
            with replacing(self.path) as tmp:
                torch.save({"key": self.key, "pieces": pieces, "generator": generator_state}, tmp)
        except TextVAEError as error:  # a full disk costs the ability to resume, not the evaluation
            log.warning(f"{error}; the evaluation goes on without it")
            self.key = ""
            return False
        self.last = self.clock()
        return True

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
