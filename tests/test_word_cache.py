"""Built word constraints kept between commands (word_cache.py): loaded
the same as built, only when sound and private, and passed over when the
cache folder cannot be used."""

import pytest
import torch

from test_lexicon import LISTED, tokenizer_of


def test_a_built_word_list_is_cached_and_loads_the_same(tmp_path, monkeypatch):
    from textvae import lexicon, word_cache

    monkeypatch.setenv("TEXTVAE_CACHE_DIR", str(tmp_path / "cache"))
    tokenizer = tokenizer_of("bpe")
    built = word_cache.word_constraint(tokenizer, LISTED)
    files = list((tmp_path / "cache").glob("words-*.pt"))
    assert len(files) == 1 and not list((tmp_path / "cache").glob("*.tmp"))
    # The second time it comes from the file: building is not needed, and every table is the same.
    monkeypatch.setattr(lexicon.WordConstraint, "__init__", lambda *a: pytest.fail("built again"))
    loaded = word_cache.word_constraint(tokenizer, list(reversed(LISTED)))  # order does not matter
    for name in (*lexicon.STORED, "offsets", "keys", "key_nodes", "follows"):
        table, expected = getattr(loaded, name), getattr(built, name)
        assert table.dtype == expected.dtype and torch.equal(table, expected), name
    assert (loaded.vocab_size, loaded.eos_id, loaded.words) == (built.vocab_size, built.eos_id, built.words)
    states = loaded.initial(2)
    assert torch.equal(loaded.allowed(states), built.allowed(states))
    # Another word list is another file; a damaged file is built again and replaced.
    monkeypatch.undo()
    monkeypatch.setenv("TEXTVAE_CACHE_DIR", str(tmp_path / "cache"))
    word_cache.word_constraint(tokenizer, LISTED[:-1])
    assert len(list((tmp_path / "cache").glob("words-*.pt"))) == 2
    files[0].write_bytes(b"not a tensor file")
    assert torch.equal(word_cache.word_constraint(tokenizer, LISTED).keys, built.keys)
    assert lexicon.WordConstraint.from_state(torch.load(files[0], weights_only=True)).words == built.words


def test_a_cached_file_is_used_only_when_it_is_sound_and_private(tmp_path, monkeypatch):
    from textvae import lexicon, word_cache

    monkeypatch.setenv("TEXTVAE_CACHE_DIR", str(tmp_path / "cache"))
    tokenizer = tokenizer_of("bpe")
    built = word_cache.word_constraint(tokenizer, LISTED)
    (path,) = (tmp_path / "cache").glob("words-*.pt")
    state = built.state()
    bad = dict(state, child_nodes=state["child_nodes"] + built.nodes)  # would index past the tables
    with pytest.raises(ValueError, match="child_nodes"):
        lexicon.WordConstraint.from_state(bad)
    torch.save(bad, path)
    assert torch.equal(word_cache.word_constraint(tokenizer, LISTED).child_nodes, built.child_nodes)
    path.chmod(0o666)  # others may write it: not loaded, built again
    builds = []
    original = lexicon.WordConstraint.__init__
    monkeypatch.setattr(lexicon.WordConstraint, "__init__", lambda self, *a: builds.append(1) or original(self, *a))
    word_cache.word_constraint(tokenizer, LISTED)
    assert builds == [1]


def test_without_a_usable_cache_folder_it_builds(tmp_path, monkeypatch):
    from textvae import word_cache

    tokenizer = tokenizer_of("bpe")
    monkeypatch.setenv("TEXTVAE_CACHE_DIR", "off")
    assert word_cache.word_constraint(tokenizer, LISTED).words == len(LISTED)
    blocked = tmp_path / "file"
    blocked.write_text("a file where the folder would be")
    monkeypatch.setenv("TEXTVAE_CACHE_DIR", str(blocked))
    assert word_cache.word_constraint(tokenizer, LISTED).words == len(LISTED)
    # A write that fails as torch.save reports it (RuntimeError) leaves no partial file.
    monkeypatch.setenv("TEXTVAE_CACHE_DIR", str(tmp_path / "cache"))

    def failing(*args, **kwargs):
        raise RuntimeError("File cannot be opened.")

    monkeypatch.setattr(torch, "save", failing)
    assert word_cache.word_constraint(tokenizer, LISTED).words == len(LISTED)
    assert list((tmp_path / "cache").iterdir()) == []
