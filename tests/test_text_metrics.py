"""The text metrics by hand: exact match ignores case and spacing only, BLEU
of perfect reconstructions is 100, distinct-n counts the distinct n-grams,
and self-BLEU is 100 for identical samples and near 0 for disjoint ones."""

import pytest

from textvae.evaluation.text_metrics import corpus_bleu, distinct_n, self_bleu

from conftest import TEST


def test_exact_match_ignores_case_and_spacing_only():
    from textvae.evaluation.text_eval import exact_match

    assert exact_match(["The cat  sat", "a dog ran", "a dog"], ["the cat sat", "a dog ran ", "a dog ran"]) == 2 / 3
    assert exact_match(["the cats sat"], ["the cat sat"]) == 0.0


def test_bleu_of_perfect_reconstructions_is_100():
    score, signature = corpus_bleu(TEST, TEST)
    assert score == pytest.approx(100.0)
    assert "nrefs:1" in signature and "tok:13a" in signature
    assert corpus_bleu(["the dog sat by the door", *TEST[1:]], TEST)[0] < 100.0


def test_distinct_n_by_hand():
    sentences = ["a b a b", "a c"]
    assert distinct_n(sentences, 1) == pytest.approx(3 / 6)  # a, b, c of 6 words
    assert distinct_n(sentences, 2) == pytest.approx(3 / 4)  # (a b), (b a), (a c) of 4 bigrams
    assert distinct_n(["a"], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_self_bleu_of_identical_and_disjoint_samples():
    assert self_bleu(["the cat sat on the mat"] * 4) == pytest.approx(100.0)
    disjoint = ["the cat sat on the mat", "a dog ran to a park", "birds fly over green hills", "we drank cold water"]
    assert self_bleu(disjoint) < 5.0
    assert self_bleu(["only one"]) == 0.0
