"""The text front end: any Hugging Face tokenizer, or one trained on the corpus.

A ``Tokenizer`` wraps a fast ``tokenizers.Tokenizer`` plus the four special
tokens the models need (pad, bos, eos, unk), adding whichever are missing.
Sentences are encoded without the backend's own special tokens; the data
pipeline adds bos and eos itself, so every tokenizer frames text the same way.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Iterable, Iterator, Optional

from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from .config import TokenizerConfig
from .errors import TextVAEError

TRAINED_KINDS = ("word", "bpe", "wordpiece", "unigram")
DEFAULT_SPECIALS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}
SPECIAL_ROLES = tuple(DEFAULT_SPECIALS)  # every tokenizer has the four
SPECIALS_FILE = "special_tokens.json"
WORDS_FILE = "words.txt"  # the training corpus's words, one a line: what known-word decoding may spell
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class Tokenizer:
    """Text <-> token ids, with ``pad_id``, ``bos_id``, ``eos_id``, ``unk_id``."""

    def __init__(self, backend: Backend, specials: dict[str, str], source: str = "") -> None:
        backend.no_truncation()
        backend.no_padding()
        self.backend = backend
        self.source = source
        self.specials = dict(specials)
        missing = [tok for tok in dict.fromkeys(specials.values()) if backend.token_to_id(tok) is None]
        if missing:
            backend.add_special_tokens(missing)
        ids = {role: backend.token_to_id(tok) for role, tok in specials.items()}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = ids["pad"], ids["bos"], ids["eos"], ids["unk"]
        self.frame_ids = {self.pad_id, self.bos_id, self.eos_id}
        self.words: list[str] = []  # the training corpus's words (corpus_words); empty where unknown

    @property
    def never_generated(self) -> tuple[int, ...]:
        """Ids a decoder must never output: padding, and bos where it is not eos."""
        return (self.pad_id,) if self.bos_id == self.eos_id else (self.pad_id, self.bos_id)

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (the count can be smaller: a word-level
        trainer that meets a special token such as PTB's <unk> in the text
        gives it a second id and leaves the first unused)."""
        return max(self.backend.get_vocab(with_added_tokens=True).values()) + 1

    @functools.cached_property
    def after_word(self) -> dict[int, str]:
        """What each id's text adds after a whole word: the text of "the"
        followed by the id, less "the" ("##ing" -> "ing", a byte-level piece
        with its leading space -> " piece"). Decoding each id after a word is
        how ``word_pieces`` and known-word decoding (lexicon.py) classify ids
        for any tokenizer. Frame ids and unk are left out; empty where "the"
        has no tokens."""
        anchor = self.encode("the")
        if not anchor:
            return {}
        candidates = [i for i in range(self.vocab_size) if i not in self.frame_ids and i != self.unk_id]
        texts = self.backend.decode_batch([anchor + [i] for i in candidates], skip_special_tokens=False)
        out = {}
        for token_id, text in zip(candidates, texts):
            text = text.lstrip()
            out[token_id] = text[len("the"):] if text.startswith("the") else ""
        return out

    @functools.cached_property
    def word_pieces(self) -> tuple[int, ...]:
        """Ids that continue the word before them (``##ing`` in WordPiece, a
        byte-level BPE piece without its leading space, ...): the ones whose
        text joins the previous word with no space and starts with a letter, a
        digit or a non-ASCII character (a byte of an accented letter), by
        ``after_word``, so it holds for any tokenizer; a completion of
        ``"the man"`` excludes them as its first token so that it does not
        turn "man" into "manner"."""
        return tuple(token_id for token_id, rest in self.after_word.items()
                     if rest[:1].isalnum() or rest[:1] and not rest[0].isascii() and not rest[0].isspace())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text (cleaned by ``clean_text``), without bos/eos."""
        texts = [clean_text(t) for t in texts]
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)  # no offsets: tokenizers >= 0.20
        return [enc.ids for enc in encode(texts, add_special_tokens=False)]

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; pad, bos and eos are dropped, unk is kept visible."""
        kept = [int(i) for i in ids if int(i) not in self.frame_ids]
        return clean_text(self.backend.decode(kept, skip_special_tokens=False)).strip()

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def require_known(self, text: str, ids: list[int]) -> None:
        """One error line for ``text`` whose every token is unk: a model would read nothing of it."""
        if ids and all(i == self.unk_id for i in ids):
            raise TextVAEError(f"every word of {text!r} is unknown to the model's vocabulary")

    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` and the special-token roles; the folder
        also loads with ``transformers.PreTrainedTokenizerFast``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / "tokenizer.json"))
        (directory / SPECIALS_FILE).write_text(json.dumps({"specials": self.specials, "source": self.source}, indent=2))
        hf_config = {f"{role}_token": tok for role, tok in self.specials.items()}
        hf_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        (directory / "tokenizer_config.json").write_text(json.dumps(hf_config, indent=2))
        if self.words:
            (directory / WORDS_FILE).write_text("".join(w + "\n" for w in self.words), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> "Tokenizer":
        directory = Path(directory)
        meta_path = directory / SPECIALS_FILE
        backend_path = directory / "tokenizer.json"
        if not meta_path.is_file() or not backend_path.is_file():
            raise TextVAEError(f"{directory} holds no saved textvae tokenizer")
        for path in (meta_path, backend_path):  # never read an endless or huge file into memory
            if path.stat().st_size > MAX_TOKENIZER_BYTES:
                raise TextVAEError(f"{path} is larger than {MAX_TOKENIZER_BYTES // 2**20} MiB: not a tokenizer file")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            specials = meta["specials"]
            if not isinstance(specials, dict) or not all(isinstance(specials.get(role), str) and specials[role]
                                                         for role in SPECIAL_ROLES):
                raise ValueError(f"'specials' must map each of {', '.join(SPECIAL_ROLES)} to a token")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError, OSError) as error:
            raise TextVAEError(f"{meta_path} is malformed: {str(error).splitlines()[0] if str(error) else error!r}") \
                from None
        try:
            backend = Backend.from_file(str(backend_path))
        except Exception as error:  # tokenizers raises a bare Exception on bad JSON
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TextVAEError(f"{backend_path} is malformed: {first}") from None
        tokenizer = cls(backend, specials, meta.get("source", ""))  # meta is a mapping: meta["specials"] was read
        words_path = directory / WORDS_FILE
        if words_path.is_file():
            if words_path.stat().st_size > MAX_TOKENIZER_BYTES:
                raise TextVAEError(f"{words_path} is larger than {MAX_TOKENIZER_BYTES // 2**20} MiB: not a word list")
            tokenizer.words = words_path.read_text(encoding="utf-8", errors="replace").split()
        return tokenizer


MAX_TOKENIZER_BYTES = 256 * 2**20  # the largest hub tokenizer.json files are tens of MiB
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")  # C0 and C1 control characters but tab


def corpus_words(texts: Iterable[str]) -> list[str]:
    """The distinct whitespace-separated words of ``texts`` (cleaned as the
    models see them), sorted."""
    return sorted({word for text in texts for word in clean_text(text).split()})


def clean_text(text: str) -> str:
    """Text as the models see it: no byte-order mark (a file saved with one
    would glue it to its first word) and control characters (ESC, NUL, ...)
    as spaces, so they never become tokens nor reach a terminal raw."""
    return _CONTROL.sub(" ", text.replace("\ufeff", ""))


def build_tokenizer(config: TokenizerConfig, training_texts: Optional[Iterable[str]] = None) -> Tokenizer:
    """Tokenizer from ``config.spec``: a kind to train on ``training_texts``,
    a local folder or ``tokenizer.json``, or a hub name."""
    spec = config.spec
    if spec in TRAINED_KINDS:
        if training_texts is None:
            raise TextVAEError(f"tokenizer {spec!r} is trained on the training split, but no texts were given")
        return train_tokenizer(spec, (clean_text(t) for t in training_texts), config)
    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        try:
            backend = Backend.from_file(str(path))
        except Exception as error:
            raise TextVAEError(f"cannot read tokenizer file {path}: {str(error).splitlines()[0]}") from None
        return Tokenizer(backend, _specials_from_vocab(backend), source=str(path))
    if path.is_dir() or (HUB_NAME.match(spec) and not path.exists()):
        return _load_pretrained(spec)
    raise TextVAEError(f"unknown tokenizer {spec!r}: expected one of {', '.join(TRAINED_KINDS)}, "
                       "a tokenizer folder, a tokenizer.json file or a hub name")


def _load_pretrained(spec: str) -> Tokenizer:
    """A Hugging Face tokenizer folder or hub name, through transformers."""
    import transformers

    from .hub import local_only

    offline = local_only(spec)
    try:
        hf = transformers.AutoTokenizer.from_pretrained(spec, local_files_only=offline)
    except Exception as error:
        if offline:
            raise TextVAEError(f"unknown tokenizer {spec!r}: not a local path, not in the local Hugging Face "
                               "cache, and the hub cannot be reached (offline?)") from None
        where = "folder" if Path(spec).is_dir() else "hub name"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise TextVAEError(f"unknown tokenizer {spec!r}: cannot load it as a Hugging Face {where} ({first})") from None
    if not getattr(hf, "is_fast", False):
        raise TextVAEError(f"tokenizer {spec!r} has no fast (tokenizers) version")
    found = {
        "pad": hf.pad_token,
        "bos": hf.bos_token or getattr(hf, "cls_token", None),
        "eos": hf.eos_token or getattr(hf, "sep_token", None),
        "unk": hf.unk_token,
    }
    return Tokenizer(hf.backend_tokenizer, complete_specials(found), source=spec)


def _specials_from_vocab(backend: Backend) -> dict[str, Optional[str]]:
    vocab = backend.get_vocab(with_added_tokens=True)
    candidates = {
        "pad": ("<pad>", "[PAD]", "<|pad|>"),
        "bos": ("<s>", "[CLS]", "<bos>", "<|endoftext|>"),
        "eos": ("</s>", "[SEP]", "<eos>", "<|endoftext|>"),
        "unk": ("<unk>", "[UNK]", "<|unk|>"),
    }
    found = {role: next((tok for tok in options if tok in vocab), None) for role, options in candidates.items()}
    return complete_specials(found)


def complete_specials(found: dict[str, Optional[str]]) -> dict[str, str]:
    """Fill in missing special tokens. bos and eos may coincide (GPT-2), but
    pad and unk must be tokens of their own: padding is masked out and word
    dropout writes unk, so neither may be confused with a real boundary."""
    specials = {}
    for role in ("bos", "eos"):
        specials[role] = found.get(role) or DEFAULT_SPECIALS[role]
    for role in ("pad", "unk"):
        token = found.get(role)
        taken = set(specials.values())
        specials[role] = token if token and token not in taken else DEFAULT_SPECIALS[role]
    return specials


def train_tokenizer(kind: str, texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    """Train a ``tokenizers`` model of ``kind`` on ``texts``.

    ``word`` keeps every training word when ``vocab_size`` is 0 (or the most
    frequent ``vocab_size`` words otherwise) and splits on whitespace only, so
    Penn Treebank keeps its own vocabulary and its ``<unk>`` is our unk.
    """
    specials = dict(DEFAULT_SPECIALS)
    special_list = [specials["pad"], specials["bos"], specials["eos"], specials["unk"]]
    size = config.vocab_size or 10**9
    if kind == "word":
        backend = Backend(models.WordLevel(unk_token=specials["unk"]))
        backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        trainer = trainers.WordLevelTrainer(vocab_size=size, min_frequency=config.min_frequency,
                                            special_tokens=special_list, show_progress=False)
    elif kind == "bpe":
        backend = Backend(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=size, min_frequency=config.min_frequency, special_tokens=special_list,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    elif kind == "wordpiece":
        backend = Backend(models.WordPiece(unk_token=specials["unk"]))
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=size, min_frequency=config.min_frequency,
                                            special_tokens=special_list, show_progress=False)
    elif kind == "unigram":
        backend = Backend(models.Unigram())
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        backend.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=size, special_tokens=special_list, unk_token=specials["unk"],
                                          show_progress=False)
    else:
        raise TextVAEError(f"unknown tokenizer kind {kind!r}")
    if config.lowercase:
        backend.normalizer = normalizers.Lowercase()
    backend.train_from_iterator(_batched(texts), trainer=trainer)
    return Tokenizer(backend, specials, source=kind)


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
