"""Decoding that spells only words of a word list.

A sub-word decoder can spell words that exist nowhere: sampled from a small
model, a fifth to a third of the words of a sentence may be BPE pieces glued
into non-words ("the importish gracked her cles"). Constraining decoding to a
prefix trie of allowed token sequences is how retrieval-by-generation keeps
its outputs to names that exist (De Cao et al. 2021, "Autoregressive Entity
Retrieval"); here the trie holds the token spelling of every word of a list
(usually the training corpus's), and a sentence is any sequence of its words.

Each word has two spellings, both asked of the tokenizer itself so that no
marker scheme (byte-level ``Ġ``, WordPiece ``##``, SentencePiece ``▁``) is
assumed: at the start of a sentence (``encode(w)``) and after another word
(``encode("a " + w)`` without ``encode("a")``). The automaton's states are
trie nodes; at a node the allowed next tokens are its children and, where a
word ends there, the first tokens of a following word, punctuation that
closes the word (",", ".", ")": "vigilant," needs only "vigilant" on the
list) and end of sentence. A token that continues the current word is read
as such before it is read as the start of a new one, so a state never leads
to a dead end.

States are integers and the tables are tensors, so masking and advancing a
batch of R rows is a few vectorised operations per step, no Python per row.

Building the trie of a large list takes seconds (120,000 words: about 2.7 s,
mostly tokenizing each word twice); ``word_cache.py`` keeps built ones.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor

from .errors import TextVAEError
from .tokenization import clean_text

# Fixed states: the roots (sentence start, after a word), inside a word off
# the list (a prefix's own), and after punctuation that closed a word.
FIRST, LATER, OUTSIDE, PUNCTUATION = 0, 1, 2, 3
ANCHOR = "a"  # the word before a word, to learn its in-sentence spelling


class WordConstraint:
    """A prefix trie over the token spellings of ``words`` (a collection of
    whitespace-free strings), as tensors for batched decoding."""

    def __init__(self, tokenizer, words: Iterable[str]) -> None:
        words = listed_words(words)
        if not words:
            raise TextVAEError("the word list for constrained decoding is empty")
        self.vocab_size, self.eos_id, self.words = tokenizer.vocab_size, tokenizer.eos_id, len(words)
        anchor = tokenizer.encode(ANCHOR)
        first = tokenizer.encode_batch(words)
        later = tokenizer.encode_batch([f"{ANCHOR} {w}" for w in words])
        children: list[dict[int, int]] = [{}, {}, {}, {}]
        terminal = [False, False, False, True]
        for root, spellings in ((FIRST, first), (LATER, later)):
            for spelling in spellings:
                if root == LATER:
                    if spelling[: len(anchor)] != anchor:
                        continue  # the tokenizer merged the word into the anchor: no clean spelling
                    spelling = spelling[len(anchor):]
                if not spelling or tokenizer.unk_id in spelling:
                    continue
                node = root
                for token in spelling:
                    nxt = children[node].get(token)
                    if nxt is None:
                        nxt = len(children)
                        children[node][token] = nxt
                        children.append({})
                        terminal.append(False)
                    node = nxt
                terminal[node] = True
        if not children[FIRST]:
            raise TextVAEError("no word of the list can be spelt by this model's tokenizer")
        punctuation = set(closing_punctuation(tokenizer))
        # A node reached by punctuation from a whole word ("well" "-" on the way to "well-known";
        # "." on the way to "...") also closes that word: it allows what follows a whole word.
        ended = list(terminal)
        for parent, edges in enumerate(children):  # a child's id is above its parent's
            for token, child in edges.items():
                if token in punctuation and (parent == LATER or ended[parent]):
                    ended[child] = True
        # Tokens still needed to finish the word under way at each node (0 where one is whole), so
        # that decoding near max_length only starts or continues a word it can end in time.
        finish = [0 if ended[node] or node == OUTSIDE else len(children) for node in range(len(children))]
        for node in range(len(children) - 1, -1, -1):  # children after parents: theirs are final
            for child in children[node].values():
                finish[node] = min(finish[node], finish[child] + 1)
        self.counts = torch.tensor([len(c) for c in children])  # (N,)
        self.child_tokens = torch.tensor([t for c in children for t in c], dtype=torch.long)  # (E,)
        self.child_nodes = torch.tensor([n for c in children for n in c.values()], dtype=torch.long)  # (E,)
        self.terminal = torch.tensor(ended)  # (N,) a sentence may end or another word begin here
        self.finish = torch.tensor(finish)  # (N,) fewest tokens from here to a whole word
        self.starts = torch.zeros(self.vocab_size, dtype=torch.bool)  # (V,) first tokens of a later word
        self.starts[list(children[LATER])] = True
        self.start_finish = torch.zeros(self.vocab_size, dtype=torch.long)  # (V,) the same after a word's first token
        self.start_finish[list(children[LATER])] = self.finish[list(children[LATER].values())]
        # After a whole word: another, or punctuation that closes it ("day," "it)"), listed or not.
        self.punctuation = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.punctuation[list(punctuation)] = True
        # Inside a word off the list (a prefix's own): its pieces, a listed word, punctuation, or the end.
        self.outside = self.starts | self.punctuation
        self.outside[list(tokenizer.word_pieces)] = True
        self.outside[self.eos_id] = True
        self._index()

    def _index(self) -> None:
        """The tables derived from the stored ones (``STORED``): each node's
        first edge, the sorted (node, token) keys for advancing, the tokens
        that may follow a whole word."""
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.counts.cumsum(0)])  # (N+1,)
        parents = torch.repeat_interleave(torch.arange(len(self.counts)), self.counts)  # (E,)
        keys = parents * self.vocab_size + self.child_tokens
        self.keys, order = keys.sort()  # (E,) node * V + token, for advancing by binary search
        self.key_nodes = self.child_nodes[order]
        self.follows = self.starts | self.punctuation
        self.device = torch.device("cpu")

    def state(self) -> dict[str, Tensor]:
        """What rebuilds it (``from_state``): the stored tables and sizes."""
        sizes = torch.tensor([self.vocab_size, self.eos_id, self.words])
        return {"sizes": sizes, **{name: getattr(self, name) for name in STORED}}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> "WordConstraint":
        """The constraint ``state()`` describes, its tables checked for shape,
        type and range (ValueError otherwise), so that no stored file can make
        decoding index out of bounds."""
        self = cls.__new__(cls)
        sizes = state["sizes"]
        if sizes.shape != (3,):
            raise ValueError("sizes: not (vocabulary, eos, words)")
        self.vocab_size, self.eos_id, self.words = (int(v) for v in sizes)
        for name in STORED:
            table = state[name]
            flags = name in ("terminal", "starts", "punctuation", "outside")
            if table.dim() != 1 or (table.dtype == torch.bool) != flags or table.is_floating_point():
                raise ValueError(f"{name}: not a 1-d {'bool' if flags else 'integer'} table")
            setattr(self, name, table if flags else table.long())
        nodes, vocab = len(self.counts), self.vocab_size
        edges = int(self.counts.sum()) if nodes else -1
        checks = {
            "sizes": vocab > 0 and 0 <= self.eos_id < vocab and self.words > 0 and nodes > PUNCTUATION,
            "counts": bool((self.counts >= 0).all()),
            "edges": len(self.child_tokens) == len(self.child_nodes) == edges,
            "child_tokens": bool(((self.child_tokens >= 0) & (self.child_tokens < vocab)).all()),
            "child_nodes": bool(((self.child_nodes > 0) & (self.child_nodes < nodes)).all()),
            "nodes": len(self.terminal) == len(self.finish) == nodes and bool((self.finish >= 0).all()),
            "vocabulary": all(len(getattr(self, n)) == vocab for n in ("starts", "start_finish", "punctuation",
                                                                        "outside")),
        }
        broken = [name for name, ok in checks.items() if not ok]
        if broken:
            raise ValueError(f"inconsistent tables: {', '.join(broken)}")
        self._index()
        return self

    @property
    def nodes(self) -> int:
        return len(self.terminal)

    def to(self, device: torch.device | str) -> "WordConstraint":
        device = torch.device(device)
        if device != self.device:
            for name in ("offsets", "counts", "child_tokens", "child_nodes", "keys", "key_nodes", "terminal",
                         "finish", "starts", "start_finish", "punctuation", "follows", "outside"):
                setattr(self, name, getattr(self, name).to(device))
            self.device = device
        return self

    def initial(self, rows: int) -> Tensor:
        """The state at the start of a sentence, (rows,)."""
        return torch.full((rows,), FIRST, dtype=torch.long, device=self.device)

    def allowed(self, states: Tensor, room: Optional[int] = None) -> Tensor:
        """(R,) states -> (R, V) bool: the tokens each row may take next. With
        ``room`` (the tokens left after this one), only those that leave a
        word that can be finished within it: a sentence that runs to
        max_length ends with a whole word instead of losing a half-spelt one."""
        rows = len(states)
        mask = torch.zeros(rows, self.vocab_size, dtype=torch.bool, device=self.device)
        counts = self.counts[states]  # (R,)
        total = int(counts.sum())
        if total:
            row = torch.repeat_interleave(torch.arange(rows, device=self.device), counts, output_size=total)
            first = torch.cumsum(counts, 0) - counts  # (R,) where each row's run starts in the flat list
            edge = self.offsets[states][row] + torch.arange(total, device=self.device) - first[row]
            tokens = self.child_tokens[edge]  # (total,)
            mask[row, tokens] = True
            if room is not None:  # a child is read before a new word (advance): it alone decides its token
                children = mask.clone()
                late = self.finish[self.child_nodes[edge]] > room
                mask[row[late], tokens[late]] = False
        ended = self.terminal[states]  # (R,) a word is complete here
        fits = None if room is None else self.start_finish <= room  # (V,) a new word that can end in time
        after = ended.unsqueeze(1) & (self.follows if fits is None else self.follows & fits)
        if room is not None and total:
            after &= ~children
        mask |= after
        mask[:, self.eos_id] |= ended
        mask[states == OUTSIDE] = self.outside if fits is None else self.outside & fits
        return mask

    def at_boundary(self, states: Tensor) -> Tensor:
        """(R,) bool: the text so far ends with a whole word (or one off the
        list that a forced prefix brought): a sentence cut here has no
        half-spelt word."""
        return self.terminal[states] | (states == OUTSIDE)

    def mask(self, logits: Tensor, states: Tensor, room: Optional[int] = None) -> Tensor:
        """logits (R, V) with every disallowed token at -inf (``room`` as in
        ``allowed``); a row left with nothing (a forced prefix that ends inside
        a word no list word completes, a token the caller also forbids) keeps
        its own logits."""
        allowed = self.allowed(states, room) & (logits > float("-inf"))
        empty = ~allowed.any(-1, keepdim=True)
        if room is not None and bool(empty.any()):  # no word fits in the room: the list alone (max_length cuts)
            allowed = torch.where(empty, self.allowed(states) & (logits > float("-inf")), allowed)
            empty = ~allowed.any(-1, keepdim=True)
        return logits.masked_fill(~(allowed | empty), float("-inf"))

    def advance(self, states: Tensor, tokens: Tensor) -> Tensor:
        """The states after each row takes its token, (R,) -> (R,). A token
        that continues the current word is read so first; else one that
        starts a listed word begins it; else punctuation after a whole word
        closes it; anything else (a forced prefix's own word) leads to
        OUTSIDE until the next word starts."""
        child = self._lookup(states, tokens)
        other = torch.where(self.punctuation[tokens] & self.at_boundary(states),
                            torch.full_like(states, PUNCTUATION), torch.full_like(states, OUTSIDE))
        new_word = torch.where(self.starts[tokens], self._lookup(torch.full_like(states, LATER), tokens), other)
        return torch.where(child >= 0, child, new_word)

    def _lookup(self, states: Tensor, tokens: Tensor) -> Tensor:
        """Child of each state by its token, -1 where there is none."""
        key = states * self.vocab_size + tokens
        where = torch.searchsorted(self.keys, key).clamp(max=len(self.keys) - 1)
        return torch.where(self.keys[where] == key, self.key_nodes[where], torch.full_like(states, -1))


STORED = ("counts", "child_tokens", "child_nodes", "terminal", "finish", "starts", "start_finish", "punctuation",
          "outside")


def listed_words(words: Iterable[str]) -> list[str]:
    """The distinct words of ``words`` as the tokenizer will see them, sorted."""
    return sorted({w for raw in words for w in clean_text(raw).split()})


CLOSING = set(".,;:!?)]}'\"\u2019\u201d\u00bb\u2026")  # what may close a word: "day," "it)" "so?'"


def closing_punctuation(tokenizer) -> list[int]:
    """Ids whose text joins the word before it with no space and is only
    closing punctuation (``CLOSING``: ",", ".", ")", ...; not "(", "@" nor a
    control character's byte), by ``Tokenizer.after_word``."""
    return [token_id for token_id, rest in tokenizer.after_word.items() if rest and all(c in CLOSING for c in rest)]
