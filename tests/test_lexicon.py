"""Known-word decoding (textvae/lexicon.py): with a word list, every strategy
spells only listed words on byte-level BPE, WordPiece, Unigram and word
tokenizers (where the same untrained model without it makes up words); end of
sentence comes only after a whole word; a forced prefix with a word off the
list is kept and the continuation is held to the list; the run's config,
``words=`` in Python and ``--known-words`` / ``--any-words`` / ``--words FILE``
on the command line choose it; ``textvae train`` saves the corpus's words."""

from __future__ import annotations

import json
import shutil
import string

import pytest
import torch

from textvae.config import TokenizerConfig
from textvae.errors import TextVAEError
from textvae.generation import GenerationConfig, generate
from textvae.lexicon import FIRST, WordConstraint
from textvae.model import TextVAE
from textvae.tokenization import Tokenizer, build_tokenizer, corpus_words

from conftest import TRAIN, tiny_config

LISTED = corpus_words(TRAIN[:12])  # a strict subset of the corpus's words


def tokenizer_of(kind: str) -> Tokenizer:
    size = {"bpe": 300, "wordpiece": 60, "unigram": 60, "word": 0}[kind]  # small: words fall into pieces
    return build_tokenizer(TokenizerConfig(spec=kind, vocab_size=size), TRAIN)


def random_model(tokenizer: Tokenizer) -> TextVAE:
    torch.manual_seed(0)
    return TextVAE(tiny_config(), tokenizer).eval()


def words_of(texts: list[str]) -> set[str]:
    """The words of ``texts``, closing punctuation ("cat," "mat.") taken off."""
    return {w.rstrip(string.punctuation) for t in texts for w in t.split()}


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram", "word"])
@pytest.mark.parametrize("strategy", ["sample", "greedy", "beam"])
def test_every_strategy_spells_only_listed_words(kind, strategy):
    tokenizer = tokenizer_of(kind)
    model = random_model(tokenizer)
    words = WordConstraint(tokenizer, LISTED)
    z = torch.randn(48, 4, generator=torch.Generator().manual_seed(1))
    free = model.tokenizer.decode_batch(generate(model.decoder, z, 48, tokenizer.bos_id, tokenizer.eos_id,
                                                 GenerationConfig(strategy, max_length=12),
                                                 generator=torch.Generator().manual_seed(0),
                                                 forbidden=tokenizer.never_generated))
    held = model.tokenizer.decode_batch(generate(model.decoder, z, 48, tokenizer.bos_id, tokenizer.eos_id,
                                                 GenerationConfig(strategy, max_length=40, words=words),
                                                 generator=torch.Generator().manual_seed(0),
                                                 forbidden=tokenizer.never_generated))
    assert words_of(free) - set(LISTED), "the untrained model should make up words without the list"
    assert all(held), "a sentence is at least one word"
    assert words_of(held) <= set(LISTED) and "" not in words_of(held), "punctuation only closes a word"


def test_end_of_sentence_only_after_a_whole_word():
    tokenizer = tokenizer_of("bpe")
    words = WordConstraint(tokenizer, ["cat", "children"])
    start = words.allowed(words.initial(1))[0]
    assert not start[tokenizer.eos_id]
    state = words.initial(1)
    spelling = tokenizer.encode("children")
    assert len(spelling) > 1, "the test needs a word in several pieces"
    for token in spelling[:-1]:
        state = words.advance(state, torch.tensor([token]))
        assert not words.allowed(state)[0, tokenizer.eos_id], "mid-word"
    state = words.advance(state, torch.tensor([spelling[-1]]))
    assert words.allowed(state)[0, tokenizer.eos_id]
    later = tokenizer.encode("cat children")[len(tokenizer.encode("cat")):]
    assert words.allowed(state)[0, later[0]], "another word may follow"


def test_punctuation_closes_a_whole_word_only():
    tokenizer = tokenizer_of("bpe")
    words = WordConstraint(tokenizer, ["cat", "children"])
    comma = tokenizer.encode("cat,")[-1]
    state = words.initial(1)
    spelling = tokenizer.encode("children")
    state = words.advance(state, torch.tensor([spelling[0]]))
    assert not words.allowed(state)[0, comma], "not inside a word"
    for token in spelling[1:]:
        state = words.advance(state, torch.tensor([token]))
    assert words.allowed(state)[0, comma]
    state = words.advance(state, torch.tensor([comma]))
    later = tokenizer.encode("cat cat")[len(tokenizer.encode("cat")):]
    allowed = words.allowed(state)[0]
    assert allowed[tokenizer.eos_id] and allowed[later[0]] and allowed[comma]
    assert tokenizer.decode(spelling + [comma]) == "children,"


def test_a_prefix_off_the_list_is_kept_and_the_rest_held_to_it():
    tokenizer = tokenizer_of("bpe")
    model = random_model(tokenizer)
    words = WordConstraint(tokenizer, LISTED)
    prefix = tokenizer.encode("the zebra")  # "zebra" is spelt from bytes: no listed word
    z = torch.randn(24, 4, generator=torch.Generator().manual_seed(2))
    out = generate(model.decoder, z, 24, tokenizer.bos_id, tokenizer.eos_id,
                   GenerationConfig("sample", max_length=40, words=words), [prefix] * 24,
                   torch.Generator().manual_seed(0), tokenizer.never_generated)
    texts = tokenizer.decode_batch(out)
    assert all(t.startswith("the zebra") for t in texts)
    rest = [t[len("the zebra"):] for t in texts]
    assert words_of([r for r in rest if r.startswith(" ")]) <= set(LISTED)


def test_the_run_config_python_and_overrides_choose_it():
    tokenizer = tokenizer_of("bpe")
    tokenizer.words = LISTED
    model = random_model(tokenizer)
    assert words_of(model.sample(40, seed=0)) - set(LISTED)  # model.known_words is off by default
    assert words_of(model.sample(40, seed=0, words=True)) <= set(LISTED)
    assert words_of(model.sample(40, seed=0, words=["cat", "dog"])) <= {"cat", "dog"}
    model.config.model.known_words = True
    assert words_of(model.sample(40, seed=0)) <= set(LISTED)
    assert model.sample(40, seed=0, words=False) == TextVAE.sample(random_model(tokenizer), 40, seed=0)
    assert words_of(model.reconstruct(["the cat sat on the mat"])) <= set(LISTED)
    assert words_of(model.interpolate("the cat sat", "a dog ran", steps=3)) <= set(LISTED)
    completions = model.complete("the cat", 10, seed=0)
    assert all(c.startswith("the cat") for c in completions) and words_of(completions) <= set(LISTED)


def test_no_word_list_is_one_clear_error():
    tokenizer = tokenizer_of("bpe")
    model = random_model(tokenizer)
    with pytest.raises(TextVAEError, match="no word list"):
        model.sample(2, words=True)
    with pytest.raises(TextVAEError, match="empty"):
        WordConstraint(tokenizer, [])
    with pytest.raises(TextVAEError, match="not one string"):
        model.sample(2, words="cat")


def test_train_saves_the_corpus_words_and_the_cli_uses_them(cli, trained_run, tmp_path):
    saved = (trained_run / "tokenizer" / "words.txt").read_text().split()
    assert saved == corpus_words(TRAIN)
    assert Tokenizer.load(trained_run / "tokenizer").words == saved
    result = cli("sample", trained_run, "-n", "30", "--seed", "0", "--known-words", "--temperature", "3")
    assert result.code == 0 and words_of(result.out_lines) <= set(saved)
    listed = tmp_path / "words.txt"
    listed.write_text("the cat dog sat ran\n")
    result = cli("sample", trained_run, "-n", "20", "--seed", "0", "--words", listed, "--temperature", "3")
    assert result.code == 0 and words_of(result.out_lines) <= {"the", "cat", "dog", "sat", "ran"}
    result = cli("complete", trained_run, "the cat", "-n", "5", "--seed", "0", "--words", listed)
    assert result.code == 0 and words_of(result.out_lines) <= {"the", "cat", "dog", "sat", "ran"}
    free = cli("sample", trained_run, "-n", "30", "--seed", "0", "--any-words", "--temperature", "3")
    assert free.code == 0 and free.out == cli("sample", trained_run, "-n", "30", "--seed", "0",
                                               "--temperature", "3").out


@pytest.mark.parametrize("content, message", [(None, "does not exist"), (" \n", "is empty"),
                                               (b"\xff\xfe cat", "not UTF-8"), ("folder", "cannot read")])
def test_a_bad_word_file_is_one_error_line(cli, trained_run, tmp_path, content, message):
    path = tmp_path / "words.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    result = cli("sample", trained_run, "-n", "2", "--words", path)
    assert result.code != 0 and len(result.err_lines) == 1 and message in result.err and "--words file" in result.err


def test_the_automaton_never_leaves_the_trie_for_listed_spellings():
    tokenizer = tokenizer_of("bpe")
    words = WordConstraint(tokenizer, LISTED)
    sentence = " ".join(LISTED[:6])
    state = words.initial(1)
    for token in tokenizer.encode(sentence):
        assert words.allowed(state)[0, token], "a listed sentence's own tokens are always allowed"
        state = words.advance(state, torch.tensor([token]))
    assert int(state) != FIRST and bool(words.terminal[state])


def test_eval_decodes_as_the_run_says_and_records_it(cli, trained_run, shared_corpus, tmp_path):
    run, out = tmp_path / "run", tmp_path / "eval.json"
    shutil.copytree(trained_run, run)  # eval writes the run's eval_test.json; the shared run stays as it is
    config = json.loads((run / "config.json").read_text())
    config["model"]["known_words"] = True
    (run / "config.json").write_text(json.dumps(config))
    result = cli("eval", run, "--data", shared_corpus, "--iw-samples", "2", "--samples", "20", "--json", out)
    assert result.code == 0 and "decoding held to the corpus's words" in result.out
    saved = json.loads(out.read_text())
    assert saved["settings"]["known_words"] is True
    assert words_of(saved["examples"]) <= set(corpus_words(TRAIN))


def walk(words: WordConstraint, tokens: list[int]) -> torch.Tensor:
    """The state after ``tokens``, each checked to be allowed on the way."""
    state = words.initial(1)
    for token in tokens:
        assert words.allowed(state)[0, token], token
        state = words.advance(state, torch.tensor([token]))
    return state


def test_punctuation_on_the_way_to_a_listed_word_also_closes_the_word_before():
    tokenizer = tokenizer_of("bpe")
    words = WordConstraint(tokenizer, ["the", "u", "u.s.", "cat", "well-known"])
    for listed in ("the u.s.", "the well-known"):  # words with punctuation inside stay reachable
        assert words.allowed(walk(words, tokenizer.encode(listed)))[0, tokenizer.eos_id]
    stop = walk(words, tokenizer.encode("the u."))
    assert len(tokenizer.encode("the u.")) == len(tokenizer.encode("the u")) + 1, "'.' is its own token here"
    assert words.allowed(stop)[0, tokenizer.eos_id], "'u.' is 'u' closed by '.'"
    later = tokenizer.encode("the cat")[len(tokenizer.encode("the")):]
    assert words.allowed(stop)[0, later[0]]
    dash = walk(words, tokenizer.encode("the well-"))
    assert not words.allowed(dash)[0, tokenizer.eos_id], "'-' does not close a word"


def test_a_wordpiece_stop_that_could_start_a_listed_word_still_ends_the_sentence():
    tokenizer = build_tokenizer(TokenizerConfig(spec="wordpiece", vocab_size=80), TRAIN + ["wait... then go."])
    words = WordConstraint(tokenizer, ["cat", "dog", "..."])
    state = walk(words, tokenizer.encode("cat."))
    assert words.allowed(state)[0, tokenizer.eos_id]


def test_only_closing_punctuation_follows_a_word():
    tokenizer = tokenizer_of("bpe")
    words = WordConstraint(tokenizer, ["cat"])
    allowed = words.allowed(walk(words, tokenizer.encode("cat")))[0]
    for mark in ",.)?!":
        assert allowed[tokenizer.encode("cat" + mark)[-1]], mark
    for mark in "(@$[\\":
        token = tokenizer.encode("cat" + mark)[-1]
        assert not allowed[token], mark


def test_a_word_file_is_built_into_one_trie_for_all_chunks(cli, trained_run, tmp_path, monkeypatch):
    import textvae.lexicon as lexicon

    builds = []
    original = lexicon.WordConstraint.__init__

    def counting(self, *args, **kwargs):
        builds.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(lexicon.WordConstraint, "__init__", counting)
    monkeypatch.setenv("TEXTVAE_CACHE_DIR", str(tmp_path / "cache"))
    listed = tmp_path / "words.txt"
    listed.write_text("the cat dog\n")
    result = cli("sample", trained_run, "-n", "600", "--seed", "0", "--words", listed)  # 3 chunks of 256
    assert result.code == 0 and len(result.out_lines) == 600 and len(builds) == 1
    result = cli("reconstruct", trained_run, "--words", listed, stdin=("the cat sat\n" * 300).encode())
    assert result.code == 0 and len(builds) == 1  # the second command loads the first one's from the cache


@pytest.mark.parametrize("strategy", ["sample", "greedy", "beam"])
def test_near_max_length_only_a_word_that_fits_is_begun(strategy):
    tokenizer = tokenizer_of("bpe")
    model = random_model(tokenizer)
    words = WordConstraint(tokenizer, LISTED)
    lengths = [len(tokenizer.encode(w)) for w in LISTED]
    assert min(lengths) == 1 and max(lengths) > 2, "the test needs short and long words"
    z = torch.randn(48, 4, generator=torch.Generator().manual_seed(3))
    for max_length in (2, 3, 5):
        out = generate(model.decoder, z, 48, tokenizer.bos_id, tokenizer.eos_id,
                       GenerationConfig(strategy, max_length=max_length, words=words),
                       generator=torch.Generator().manual_seed(0), forbidden=tokenizer.never_generated)
        assert all(0 < len(ids) <= max_length for ids in out), "never empty, never longer"
        for ids in out:  # the tokens spell whole listed words: nothing was cut off at max_length
            state = words.initial(1)
            for token in ids:
                state = words.advance(state, torch.tensor([token]))
            assert bool(words.terminal[state]), tokenizer.decode(ids)


def test_a_prefix_ending_mid_word_at_the_limit_gets_no_token_off_the_list():
    tokenizer = tokenizer_of("bpe")
    model = random_model(tokenizer)
    words = WordConstraint(tokenizer, LISTED)
    word = max(LISTED, key=lambda w: len(tokenizer.encode(f"the {w}")) - len(tokenizer.encode("the")))
    spelling = tokenizer.encode(f"the {word}")
    assert len(spelling) - len(tokenizer.encode("the")) >= 3, "the test needs a word of three pieces or more"
    prefix = spelling[:-2]  # two pieces short of the word's end, and room for one more token only
    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(4))
    for strategy in ("sample", "greedy", "beam"):
        out = generate(model.decoder, z, 16, tokenizer.bos_id, tokenizer.eos_id,
                       GenerationConfig(strategy, max_length=len(prefix) + 1, words=words), [prefix] * 16,
                       torch.Generator().manual_seed(0), tokenizer.never_generated)
        assert all(ids == prefix for ids in out), strategy  # the word's next piece, then cut: nothing glued on
