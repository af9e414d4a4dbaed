"""Text data: reading splits through ``datasets``, tokenising, bucketing, batching.

A data path is a file (one sentence a line), a folder with train/valid/test
files (``train.txt``, ``ptb.train.txt``, ``valid``/``validation``/``dev``...),
or ``hf:NAME[:CONFIG]`` for a hub dataset (``data.text_column`` names the
column). Empty lines are dropped and long sentences truncated; both are
counted and reported.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from .errors import TextVAEError
from .tokenization import Tokenizer

log = logging.getLogger("textvae")

SPLIT_NAMES = {"train": ("train",), "valid": ("valid", "validation", "dev", "val"), "test": ("test",)}
HELD_OUT_FRACTION = 0.05  # validation share taken from a single training file


@dataclass
class TextSplit:
    """One tokenised split: ``ids[i]`` holds sentence i without bos/eos."""

    name: str
    texts: list[str]
    ids: list[list[int]]
    dropped_empty: int = 0
    truncated: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.ids]


@dataclass
class TextBatch:
    """A padded batch. ``tokens`` (B, T) is bos, sentence, eos, then pad;
    ``lengths`` (B,) counts bos and eos; ``index`` (B,) the sentences' rows."""

    tokens: Tensor
    lengths: Tensor
    index: Tensor

    def to(self, device: torch.device | str) -> "TextBatch":
        return TextBatch(self.tokens.to(device), self.lengths.to(device), self.index.to(device))

    def __len__(self) -> int:
        return self.tokens.shape[0]


def find_split_files(path: Path) -> dict[str, Path]:
    """Split name -> file for a folder; raises if there is no train split."""
    files = [p for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")]
    found: dict[str, Path] = {}
    for split, names in SPLIT_NAMES.items():
        pattern = re.compile(r"(^|[._-])(" + "|".join(names) + r")([._-]|$)")
        matches = [p for p in files if pattern.search(p.name.lower())]
        if len(matches) > 1:
            raise TextVAEError(f"folder {path} has several {split} files: {', '.join(p.name for p in matches)}")
        if matches:
            found[split] = matches[0]
    if "train" not in found and "test" not in found and "valid" not in found:
        raise TextVAEError(f"folder {path} has no train, valid or test file (expected e.g. train.txt)")
    return found


def check_text_file(path: Path, label: str = "data file") -> str:
    """The text of ``path``; one clear error, with a line number, where it is
    missing, unreadable, empty or not UTF-8 (``label`` names it: "data file",
    "--words file")."""
    if not path.exists():
        raise TextVAEError(f"{label} {path} does not exist")
    try:
        data = path.read_bytes()
    except OSError as error:  # unreadable (permissions), a folder, a device that fails
        raise TextVAEError(f"cannot read {label} {path}: {error.strerror or error}") from None
    if not data.strip():
        raise TextVAEError(f"{label} {path} is empty")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise TextVAEError(f"{label} {path} is not UTF-8 text (line {line}, byte {error.start})") from None


def read_texts(data: str, splits: Sequence[str], text_column: str = "text") -> dict[str, list[str]]:
    """Raw sentences of each requested split that exists.

    A single file serves as the train split (with a deterministic held-out
    validation share) when ``train`` is asked for, and as every other split
    otherwise.
    """
    if data.startswith("hf:"):
        return _read_hub(data[3:], splits, text_column)
    path = Path(data)
    if not path.exists():
        raise TextVAEError(f"data path {path} does not exist")
    if path.is_dir():
        files = find_split_files(path)
        wanted = {s: files[s] for s in splits if s in files}
        if "train" in splits and "train" not in files:
            raise TextVAEError(f"folder {path} has no train split (expected a file like train.txt)")
        for file in wanted.values():
            check_text_file(file)
        return _load_text_files(wanted)
    check_text_file(path)
    texts = _load_text_files({"lines": path})["lines"]  # "all" is a reserved split name in datasets
    if "train" in splits:
        train, valid = split_off_validation(texts)
        return {s: t for s, t in (("train", train), ("valid", valid)) if s in splits}
    return {s: texts for s in splits}


def _load_text_files(files: dict[str, Path]) -> dict[str, list[str]]:
    if not files:  # none of the requested splits is in the folder; datasets would raise
        return {}
    import datasets

    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    loaded = datasets.load_dataset("text", data_files={k: str(v) for k, v in files.items()})
    return {split: loaded[split]["text"] for split in files}


def _read_hub(name: str, splits: Sequence[str], text_column: str) -> dict[str, list[str]]:
    import datasets

    repo, _, subset = name.partition(":")
    try:
        loaded = datasets.load_dataset(repo, subset or None)
    except Exception as error:
        raise TextVAEError(f"cannot load hub dataset {repo!r}: {str(error).splitlines()[0]}") from None
    aliases = {s: [n for n in SPLIT_NAMES[s] if n in loaded] for s in splits}
    out = {}
    for split, names in aliases.items():
        if names:
            if text_column not in loaded[names[0]].column_names:
                raise TextVAEError(f"hub dataset {repo!r} has no column {text_column!r} "
                                   f"(columns: {', '.join(loaded[names[0]].column_names)}); set data.text_column")
            out[split] = loaded[names[0]][text_column]
    if "train" in splits and "train" not in out:
        raise TextVAEError(f"hub dataset {repo!r} has no train split")
    return out


def split_off_validation(texts: list[str]) -> tuple[list[str], list[str]]:
    """Deterministic validation share of one file, chosen by a hash of the
    line so that it does not depend on order or on Python's hash seed."""
    train, valid = [], []
    for text in texts:
        digest = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
        (valid if digest % 1000 < HELD_OUT_FRACTION * 1000 else train).append(text)
    if not valid:
        valid = train[-1:]
    return train, valid


def tokenize_split(name: str, texts: list[str], tokenizer: Tokenizer, max_length: int) -> TextSplit:
    """Drop empty lines and truncate to ``max_length`` tokens (bos/eos excluded)."""
    kept = [t.strip() for t in texts if t.strip()]
    ids = tokenizer.encode_batch(kept) if kept else []
    truncated = sum(len(x) > max_length for x in ids)
    ids = [x[:max_length] for x in ids]
    nonempty = [i for i, x in enumerate(ids) if x]
    split = TextSplit(name, [kept[i] for i in nonempty], [ids[i] for i in nonempty],
                      dropped_empty=len(texts) - len(nonempty), truncated=truncated)
    if not split.ids:
        raise TextVAEError(f"the {name} split has no sentences")
    return split


def describe(split: TextSplit, max_length: int) -> str:
    tokens = sum(split.lengths)
    return (f"{split.name}: {len(split):,} sentences, {tokens:,} tokens; {split.dropped_empty:,} empty lines dropped, "
            f"{split.truncated:,} sentences truncated to {max_length} tokens")


def collate(ids: Sequence[Sequence[int]], index: Sequence[int], tokenizer: Tokenizer) -> TextBatch:
    """Frame each sentence as bos + ids + eos and pad to the longest."""
    width = max(len(x) for x in ids) + 2
    tokens = torch.full((len(ids), width), tokenizer.pad_id, dtype=torch.long)
    lengths = torch.empty(len(ids), dtype=torch.long)
    for row, sentence in enumerate(ids):
        framed = [tokenizer.bos_id, *sentence, tokenizer.eos_id]
        tokens[row, : len(framed)] = torch.tensor(framed, dtype=torch.long)
        lengths[row] = len(framed)
    return TextBatch(tokens, lengths, torch.as_tensor(list(index), dtype=torch.long))


class BucketBatchSampler:
    """Batches of similar length, in an order fixed by (seed, epoch).

    The data are shuffled, cut into windows of ``bucket_batches`` batches,
    each window sorted by length and cut into batches, and the batches
    shuffled again: padding falls while the order stays random. With
    ``world_size`` > 1 each rank takes every ``world_size``-th batch.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0, shuffle: bool = True,
                 bucket_batches: int = 50, rank: int = 0, world_size: int = 1) -> None:
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.bucket = batch_size * bucket_batches
        self.rank, self.world_size = rank, world_size

    def batches(self, epoch: int = 0) -> list[list[int]]:
        if not self.shuffle:  # evaluation: sorted by length, no randomness
            order = torch.argsort(self.lengths, stable=True)
            batches = [order[i: i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
            return batches[self.rank:: self.world_size]
        generator = torch.Generator().manual_seed(self.seed * 100003 + epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        batches = []
        for start in range(0, len(order), self.bucket):
            window = order[start: start + self.bucket]
            window = window[torch.argsort(self.lengths[window], stable=True)]
            batches += [window[i: i + self.batch_size].tolist() for i in range(0, len(window), self.batch_size)]
        permutation = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in permutation]
        usable = len(batches) - len(batches) % self.world_size  # equal step counts on every rank
        return batches[self.rank: usable: self.world_size]


class TextBatches:
    """A split plus its sampler: what the trainer and evaluation iterate."""

    def __init__(self, split: TextSplit, tokenizer: Tokenizer, batch_size: int, seed: int = 0, shuffle: bool = True,
                 bucket_batches: int = 50, rank: int = 0, world_size: int = 1) -> None:
        self.split, self.tokenizer = split, tokenizer
        self.sampler = BucketBatchSampler(split.lengths, batch_size, seed, shuffle, bucket_batches, rank, world_size)

    def num_batches(self, epoch: int = 0) -> int:
        return len(self.sampler.batches(epoch))

    def __len__(self) -> int:
        return len(self.split)

    def iterate(self, epoch: int = 0, start: int = 0) -> Iterator[TextBatch]:
        for index in self.sampler.batches(epoch)[start:]:
            yield collate([self.split.ids[i] for i in index], index, self.tokenizer)


def load_splits(data: str, tokenizer: Tokenizer, splits: Sequence[str], max_length: int,
                text_column: str = "text", texts: Optional[dict[str, list[str]]] = None) -> dict[str, TextSplit]:
    texts = texts if texts is not None else read_texts(data, splits, text_column)
    out = {}
    for name, raw in texts.items():
        out[name] = tokenize_split(name, raw, tokenizer, max_length)
        log.info(describe(out[name], max_length))
    return out
