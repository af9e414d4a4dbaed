"""The text front end: trained tokenizers, Hugging Face folders, files, errors."""

import pytest

from textvae.config import TokenizerConfig
from textvae.errors import TextVAEError
from textvae.tokenization import TRAINED_KINDS, Tokenizer, build_tokenizer

from conftest import SHARED_TOKENIZERS, TRAIN

SENTENCE = "the cat sat on the mat"


def trained(kind: str, texts=TRAIN, **options) -> Tokenizer:
    options.setdefault("vocab_size", 0 if kind == "word" else 300)
    return build_tokenizer(TokenizerConfig(spec=kind, **options), texts)


def check_specials(tok: Tokenizer) -> None:
    assert None not in (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id)
    assert len({tok.pad_id, tok.unk_id, tok.bos_id}) == 3
    assert len({tok.pad_id, tok.unk_id, tok.eos_id}) == 3
    assert all(0 <= i < tok.vocab_size for i in (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id))


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_trained_tokenizers_round_trip(kind):
    tok = trained(kind)
    check_specials(tok)
    for text in TRAIN[:10]:
        ids = tok.encode(text)
        assert ids and all(0 <= i < tok.vocab_size for i in ids)
        assert not set(ids) & tok.frame_ids  # sentences come without bos/eos
        assert tok.decode(ids) == text
    assert tok.encode_batch(TRAIN[:3]) == [tok.encode(t) for t in TRAIN[:3]]
    # Framing tokens are dropped by decode.
    assert tok.decode([tok.bos_id, *tok.encode(SENTENCE), tok.eos_id, tok.pad_id, tok.pad_id]) == SENTENCE


def test_word_level_keeps_exactly_the_training_words():
    tok = trained("word")
    words = {w for text in TRAIN for w in text.split()}
    vocab = tok.backend.get_vocab(with_added_tokens=True)
    assert set(vocab) == words | set(tok.specials.values())
    assert tok.vocab_size == len(words) + 4
    assert tok.encode("the zebra sat") == [vocab["the"], tok.unk_id, vocab["sat"]]
    assert tok.decode(tok.encode("the zebra sat")) == "the <unk> sat"


def test_word_level_vocab_size_keeps_the_most_frequent_words():
    tok = trained("word", vocab_size=10)  # 4 specials + 6 words
    assert tok.vocab_size == 10
    assert tok.encode("the")[0] != tok.unk_id  # the most frequent word survives


def test_ptb_unk_in_training_text_is_the_unk_id():
    tok = trained("word", texts=["the <unk> sat on the mat", "a <unk> of N dollars"])
    assert tok.encode("the <unk> sat") == [tok.encode("the")[0], tok.unk_id, tok.encode("sat")[0]]


def test_every_id_fits_the_embedding_when_a_special_token_is_frequent():
    # "<unk>" more frequent than the other words makes the word-level trainer
    # give it a second id, leaving a hole: vocab_size must still cover every id.
    texts = ["<unk> <unk> <unk> the cat", "<unk> <unk> sat on <unk> mat", "a dog"]
    tok = trained("word", texts=texts)
    ids = [i for text in texts for i in tok.encode(text)] + [tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id]
    assert max(ids) < tok.vocab_size
    assert tok.vocab_size == len({"the", "sat", "on", "mat", "a", "of", "N", "dollars"}) + 4


def test_lowercase_option():
    tok = trained("word", lowercase=True)
    assert tok.encode("The CAT") == tok.encode("the cat")


@pytest.mark.parametrize("kind", TRAINED_KINDS)
def test_save_and_load_give_identical_ids(kind, tmp_path):
    tok = trained(kind)
    tok.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    texts = TRAIN + ["an unseen zebra sentence"]
    assert loaded.encode_batch(texts) == tok.encode_batch(texts)
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id, loaded.unk_id, loaded.vocab_size) == \
        (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id, tok.vocab_size)


def test_saved_folder_loads_as_a_hugging_face_folder(tmp_path):
    tok = trained("bpe")
    tok.save(tmp_path / "tok")
    again = build_tokenizer(TokenizerConfig(spec=str(tmp_path / "tok")))
    assert again.encode(SENTENCE) == tok.encode(SENTENCE)
    assert (again.pad_id, again.bos_id, again.eos_id, again.unk_id) == (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id)


def test_tokenizer_json_file_path(tmp_path):
    tok = trained("wordpiece")
    tok.save(tmp_path / "tok")
    from_file = build_tokenizer(TokenizerConfig(spec=str(tmp_path / "tok" / "tokenizer.json")))
    assert from_file.encode_batch(TRAIN) == tok.encode_batch(TRAIN)
    check_specials(from_file)


def test_load_from_a_folder_without_a_tokenizer_raises(tmp_path):
    with pytest.raises(TextVAEError, match="no saved textvae tokenizer"):
        Tokenizer.load(tmp_path)


@pytest.mark.parametrize("spec", ["nonexistent_tokenizer_xyz", "no-such-org/no-such-tokenizer"])
def test_unknown_tokenizer_raises(spec):
    with pytest.raises(TextVAEError, match="unknown tokenizer"):
        build_tokenizer(TokenizerConfig(spec=spec))


def test_unknown_path_like_spec_raises(tmp_path):
    with pytest.raises(TextVAEError, match="unknown tokenizer"):
        build_tokenizer(TokenizerConfig(spec=str(tmp_path / "missing" / "tok")))


def test_bad_tokenizer_json_raises(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(TextVAEError, match="cannot read tokenizer file"):
        build_tokenizer(TokenizerConfig(spec=str(tmp_path / "tokenizer.json")))


def test_trained_kind_needs_texts():
    with pytest.raises(TextVAEError):
        build_tokenizer(TokenizerConfig(spec="bpe"))


def shared_tokenizer(name: str) -> Tokenizer:
    folder = SHARED_TOKENIZERS / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is not here")
    return build_tokenizer(TokenizerConfig(spec=str(folder)))


def test_gpt2_gets_its_own_pad_and_unk():
    tok = shared_tokenizer("gpt2")
    endoftext = tok.backend.token_to_id("<|endoftext|>")
    assert tok.bos_id == tok.eos_id == endoftext
    check_specials(tok)
    assert tok.pad_id != endoftext and tok.unk_id != endoftext
    assert tok.vocab_size == 50257 + 2
    ids = tok.encode("Hello world, how are you?")
    assert tok.decode(ids) == "Hello world, how are you?"
    assert endoftext not in ids  # no backend specials added to sentences


def test_bert_uses_its_own_specials():
    tok = shared_tokenizer("bert-base-uncased")
    vocab = tok.backend.get_vocab(with_added_tokens=True)
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id) == \
        (vocab["[PAD]"], vocab["[CLS]"], vocab["[SEP]"], vocab["[UNK]"])
    assert tok.vocab_size == 30522
    ids = tok.encode("Hello World")
    assert tok.bos_id not in ids and tok.eos_id not in ids
    assert tok.decode(ids) == "hello world"


@pytest.mark.parametrize("name", ["gpt2", "bert-base-uncased"])
def test_shared_tokenizers_save_and_load(name, tmp_path):
    tok = shared_tokenizer(name)
    tok.save(tmp_path / "tok")
    loaded = Tokenizer.load(tmp_path / "tok")
    assert loaded.encode_batch(TRAIN[:5]) == tok.encode_batch(TRAIN[:5])
    assert (loaded.pad_id, loaded.bos_id, loaded.eos_id, loaded.unk_id) == (tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id)


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_word_pieces_are_the_ids_that_continue_a_word(kind):
    tok = trained(kind)
    pieces = set(tok.word_pieces)
    assert pieces and not pieces & (tok.frame_ids | {tok.unk_id})
    for token_id in range(tok.vocab_size):
        if token_id in tok.frame_ids or token_id == tok.unk_id:
            continue
        rest = tok.backend.decode(tok.encode("the") + [token_id]).strip()[3:4]
        glued = rest.isalnum() or rest != "" and not rest.isascii() and not rest.isspace()
        assert (token_id in pieces) == glued, (kind, tok.backend.id_to_token(token_id))
    # A word's own first token starts a new word; the tokens after it within the word do not.
    for word in ("sat", "mat", "dog"):
        ids = tok.encode("the " + word)[len(tok.encode("the")):]
        assert ids[0] not in pieces and all(i in pieces for i in ids[1:])


def test_word_level_has_no_word_pieces():
    assert trained("word").word_pieces == ()


def test_gpt2_word_pieces():
    tok = shared_tokenizer("gpt2")
    pieces = set(tok.word_pieces)
    assert tok.backend.token_to_id("Ġman") not in pieces and tok.backend.token_to_id("ner") in pieces
    assert tok.backend.token_to_id(",") not in pieces  # punctuation may follow a whole word


# ---------------------------------------------------- malformed text
@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_a_byte_order_mark_and_control_characters_never_become_tokens(kind, tmp_path):
    from textvae.data import load_splits

    (tmp_path / "train.txt").write_text("\ufeffthe cat sat\nthe dog\x1b[31m ran\x00 off\n" + "\n".join(TRAIN) + "\n",
                                        encoding="utf-8")
    texts = [line for line in (tmp_path / "train.txt").read_text(encoding="utf-8").splitlines()]
    tokenizer = build_tokenizer(TokenizerConfig(spec=kind, vocab_size=0 if kind == "word" else 200), texts)
    vocab = tokenizer.backend.get_vocab()
    assert not any("\ufeff" in token or "\x1b" in token or "\x00" in token for token in vocab)
    assert tokenizer.encode("\ufeffthe cat sat") == tokenizer.encode("the cat sat")
    assert tokenizer.encode("the\x1b cat") == tokenizer.encode("the  cat")
    split = load_splits(str(tmp_path), tokenizer, ["train"], 20)["train"]
    assert split.ids[0] == tokenizer.encode("the cat sat")
    decoded = tokenizer.decode(split.ids[1])
    assert "\x1b" not in decoded and "\x00" not in decoded and "ran" in decoded


def test_completing_unknown_words_only_is_refused_like_reconstructing(tiny_model):
    with pytest.raises(TextVAEError, match="unknown"):
        tiny_model.reconstruct(["zzyzx qwerty"])
    with pytest.raises(TextVAEError, match="unknown"):
        tiny_model.complete("zzyzx qwerty", n=1, seed=0)


@pytest.mark.parametrize("broken", ["tokenizer_json", "specials_json", "specials_shape", "huge"])
def test_a_broken_saved_tokenizer_is_one_clear_error(word_tokenizer, tmp_path, broken, monkeypatch):
    from textvae import tokenization

    word_tokenizer.save(tmp_path / "tok")
    if broken == "tokenizer_json":
        (tmp_path / "tok" / "tokenizer.json").write_text('{"model": {"type": "nonsense"')
    elif broken == "specials_json":
        (tmp_path / "tok" / "special_tokens.json").write_text("{not json")
    elif broken == "specials_shape":
        (tmp_path / "tok" / "special_tokens.json").write_text('{"specials": [1, 2]}')
    else:
        monkeypatch.setattr(tokenization, "MAX_TOKENIZER_BYTES", 100)
    with pytest.raises(TextVAEError, match="malformed|larger than"):
        Tokenizer.load(tmp_path / "tok")
