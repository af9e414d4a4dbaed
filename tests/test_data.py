"""Reading splits, cleaning, bucketing and batching."""

import pytest
import torch

from textvae.data import (BucketBatchSampler, TextBatches, collate, find_split_files, load_splits, read_texts,
                          tokenize_split)
from textvae.errors import TextVAEError

from conftest import TEST, TRAIN, VALID, write_corpus


@pytest.mark.parametrize("names", [
    ("train.txt", "valid.txt", "test.txt"),
    ("ptb.train.txt", "ptb.valid.txt", "ptb.test.txt"),
    ("train", "dev", "test"),
    ("corpus-train.txt", "corpus-validation.txt", "corpus-test.txt"),
])
def test_split_files_are_found(tmp_path, names):
    folder = write_corpus(tmp_path, names)
    found = find_split_files(folder)
    assert {k: v.name for k, v in found.items()} == dict(zip(("train", "valid", "test"), names))
    texts = read_texts(str(folder), ["train", "valid", "test"])
    assert texts == {"train": TRAIN, "valid": VALID, "test": TEST}


def test_single_file_gives_a_deterministic_held_out_validation_split(tmp_path):
    path = tmp_path / "all.txt"
    path.write_text("\n".join(TRAIN) + "\n")
    first = read_texts(str(path), ["train", "valid"])
    assert read_texts(str(path), ["train", "valid"]) == first
    assert first["valid"] and sorted(first["train"] + first["valid"]) == sorted(TRAIN)
    assert not set(first["train"]) & set(first["valid"])
    assert read_texts(str(path), ["test"]) == {"test": TRAIN}


def test_empty_lines_are_dropped_and_counted(word_tokenizer):
    texts = ["the cat sat", "", "   ", "the dog ran", "\t"]
    split = tokenize_split("train", texts, word_tokenizer, max_length=20)
    assert split.texts == ["the cat sat", "the dog ran"]
    assert len(split) == 2 and split.dropped_empty == 3 and split.truncated == 0


def test_long_sentences_are_truncated_and_counted(word_tokenizer):
    texts = ["the cat sat on the mat", "the dog", "a man walked to the shop"]
    split = tokenize_split("train", texts, word_tokenizer, max_length=4)
    assert split.lengths == [4, 2, 4]
    assert split.truncated == 2
    assert split.ids[0] == word_tokenizer.encode("the cat sat on")


def test_a_split_of_empty_lines_raises(word_tokenizer):
    with pytest.raises(TextVAEError, match="no sentences"):
        tokenize_split("valid", ["", " "], word_tokenizer, max_length=8)


def test_empty_and_long_lines_are_counted_when_read_from_files(tmp_path, word_tokenizer):
    folder = write_corpus(tmp_path)
    (folder / "train.txt").write_text("the cat sat\n\nthe dog sat on the mat by the door\n\n")
    splits = load_splits(str(folder), word_tokenizer, ["train"], max_length=5)
    assert len(splits["train"]) == 2
    assert splits["train"].dropped_empty == 2 and splits["train"].truncated == 1


@pytest.mark.parametrize("damage, message", [
    ("missing", "does not exist"),
    ("empty", "is empty"),
    ("blank", "is empty"),
    ("latin1", "not UTF-8"),
])
def test_bad_data_files_raise(tmp_path, damage, message):
    folder = write_corpus(tmp_path)
    train = folder / "train.txt"
    if damage == "missing":
        target = str(tmp_path / "nothing.txt")
    else:
        target = str(train)
        train.write_bytes({"empty": b"", "blank": b"\n \n", "latin1": "the caf\xe9 sat\n".encode("latin-1")}[damage])
    with pytest.raises(TextVAEError, match=message):
        read_texts(target, ["train", "valid"])
    if damage != "missing":  # the same file inside a folder
        with pytest.raises(TextVAEError, match=message):
            read_texts(str(folder), ["train", "valid"])


def test_non_utf8_error_gives_the_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_bytes(b"fine line\nanother\nbad \xff byte\n")
    with pytest.raises(TextVAEError, match="line 3"):
        read_texts(str(path), ["train"])


def test_folder_without_train_split_raises(tmp_path):
    folder = write_corpus(tmp_path)
    (folder / "train.txt").unlink()
    with pytest.raises(TextVAEError, match="no train split"):
        read_texts(str(folder), ["train", "valid"])
    assert read_texts(str(folder), ["test"]) == {"test": TEST}  # evaluation needs no train split


def test_folder_without_any_split_raises(tmp_path):
    (tmp_path / "notes.md").write_text("hello\n")
    with pytest.raises(TextVAEError, match="no train, valid or test file"):
        read_texts(str(tmp_path), ["train"])


def test_folder_with_two_train_files_raises(tmp_path):
    folder = write_corpus(tmp_path)
    (folder / "ptb.train.txt").write_text("the cat\n")
    with pytest.raises(TextVAEError, match="several train files"):
        read_texts(str(folder), ["train"])


def test_collate_frames_and_pads(word_tokenizer):
    tok = word_tokenizer
    ids = [tok.encode("the cat sat"), tok.encode("a dog")]
    batch = collate(ids, [7, 3], tok)
    assert batch.tokens.shape == (2, 5)
    assert batch.lengths.tolist() == [5, 4]
    assert batch.index.tolist() == [7, 3]
    assert batch.tokens[0].tolist() == [tok.bos_id, *ids[0], tok.eos_id]
    assert batch.tokens[1].tolist() == [tok.bos_id, *ids[1], tok.eos_id, tok.pad_id]


# --------------------------------------------------------------- sampler
LENGTHS = [int(x) for x in torch.randint(1, 40, (203,), generator=torch.Generator().manual_seed(0))]


def sampler(**options) -> BucketBatchSampler:
    settings = {"batch_size": 8, "seed": 3, "bucket_batches": 5, **options}
    return BucketBatchSampler(LENGTHS, **settings)


def test_sampler_order_is_fixed_by_seed_and_epoch():
    assert sampler().batches(0) == sampler().batches(0)
    assert sampler().batches(0) != sampler().batches(1)
    assert sampler().batches(0) != sampler(seed=4).batches(0)


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_covers_every_sentence_once(shuffle):
    batches = sampler(shuffle=shuffle).batches(2)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(LENGTHS)))
    assert all(1 <= len(b) <= 8 for b in batches)


def padding(batches: list[list[int]]) -> int:
    return sum(len(b) * max(LENGTHS[i] for i in b) - sum(LENGTHS[i] for i in b) for b in batches)


def test_bucketing_reduces_padding_versus_random_batches():
    order = torch.randperm(len(LENGTHS), generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [order[i: i + 8] for i in range(0, len(order), 8)]
    assert padding(sampler().batches(0)) < 0.5 * padding(random_batches)


def test_two_ranks_get_disjoint_batches_of_equal_count():
    rank0 = sampler(rank=0, world_size=2).batches(1)
    rank1 = sampler(rank=1, world_size=2).batches(1)
    seen0, seen1 = {i for b in rank0 for i in b}, {i for b in rank1 for i in b}
    assert len(rank0) == len(rank1) > 0
    assert not seen0 & seen1
    assert len(seen0 | seen1) >= len(LENGTHS) - 8  # at most one batch left out for equal step counts
    single = sampler().batches(1)
    assert sorted(rank0 + rank1) == sorted(single[: len(rank0) + len(rank1)])


def test_text_batches_resume_from_a_batch(word_tokenizer):
    split = tokenize_split("train", TRAIN, word_tokenizer, max_length=20)
    data = TextBatches(split, word_tokenizer, batch_size=8, seed=1, bucket_batches=2)
    full = [b.index.tolist() for b in data.iterate(epoch=1)]
    assert len(full) == data.num_batches(1) == 7
    assert [b.index.tolist() for b in data.iterate(epoch=1, start=3)] == full[3:]
    for batch in data.iterate(epoch=0):
        for row, i in enumerate(batch.index.tolist()):
            length = int(batch.lengths[row])
            assert batch.tokens[row, 1: length - 1].tolist() == split.ids[i]
