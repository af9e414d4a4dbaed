"""Built word constraints (lexicon.py) kept between commands.

Building the trie of a large word list takes seconds (the 119,677 words of
the built-in model: about 2.7 s, mostly tokenizing each word twice), and
every command that decodes with known words needs it. ``word_constraint``
keeps each one built in the user's cache folder (user_cache.py:
``TEXTVAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/textvae`` or ``~/.cache/textvae``;
``TEXTVAE_CACHE_DIR=off`` turns it off), under a hash of everything the tables depend on: the
tokenizer (its serialised form and special ids), the words, the building
code's settings and the ``tokenizers`` version. It loads a file only if this
user owns it and no one else may write it, with ``torch.load(weights_only=
True)``, and checks its tables before use (``WordConstraint.from_state``); a
file it cannot read, or a folder it cannot write, is passed over and the
trie built.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Iterable, Optional

import torch

from .lexicon import ANCHOR, CLOSING, WordConstraint, listed_words
from .user_cache import cache_folder, open_trusted, store

log = logging.getLogger("textvae")
CACHE_FORMAT = 1  # bump when the tables change meaning


def cache_key(tokenizer, words: list[str]) -> Optional[str]:
    """A hash of everything the tables depend on; None for a tokenizer that cannot be serialised."""
    to_str = getattr(tokenizer.backend, "to_str", None)
    if to_str is None:
        return None
    import tokenizers

    ids = (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id)
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{tokenizers.__version__}|{ids}|{ANCHOR}|{sorted(CLOSING)}\n".encode())
    digest.update(to_str().encode())
    digest.update("\n".join(words).encode())
    return digest.hexdigest()[:32]


def word_constraint(tokenizer, words: Iterable[str]) -> WordConstraint:
    """``WordConstraint(tokenizer, words)``, from the cache when it was built before."""
    words = listed_words(words)
    folder = cache_folder()
    key = cache_key(tokenizer, words) if folder is not None and words else None
    if key is None:
        return WordConstraint(tokenizer, words)
    path = folder / f"words-{key}.pt"
    try:
        kept = open_trusted(path)
        if kept is not None:
            with kept:
                loaded = WordConstraint.from_state(torch.load(kept, map_location="cpu", weights_only=True))
            if (loaded.vocab_size, loaded.eos_id) == (tokenizer.vocab_size, tokenizer.eos_id):
                return loaded
    except Exception as error:  # noqa: BLE001 (a damaged or foreign file, a folder it cannot read: rebuild)
        log.debug(f"the cached word list {path} could not be used ({error}); building it again")
    built = WordConstraint(tokenizer, words)
    _store(built, path)
    return built


def _store(built: WordConstraint, path: Path) -> None:
    """Write ``built`` to ``path`` whole; a failure is logged and passed over."""
    state = {k: v.to(torch.int32) if v.dtype == torch.long else v for k, v in built.state().items()}
    store(path, lambda out: torch.save(state, out), "the word list")
