"""The built-in `wordnet` model as it ships in the package: it loads by name from
any folder, gives held-out sentences back, samples from its exemplar prior,
completes and interpolates, and its card's figures are those of
results/builtin.json."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from textvae import builtin

pytestmark = pytest.mark.skipif("wordnet" not in builtin.builtin_names(), reason="the wordnet model is not installed")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wordnet():
    from textvae.model import TextVAE

    return TextVAE.from_pretrained("wordnet")


def test_it_is_small_enough_to_ship():
    size = sum(p.stat().st_size for p in (builtin.PRETRAINED_DIR / "wordnet").rglob("*") if p.is_file())
    assert size <= 25 * 2**20


def test_it_gives_most_held_out_sentences_back(wordnet):
    """Greedy reconstruction from the posterior mean, as results/builtin.md measures it, on 200 test sentences."""
    from textvae.evaluation.text_eval import exact_match

    texts = (ROOT / "data" / "wordnet" / "test.txt").read_text().splitlines()[:200]
    assert exact_match(wordnet.reconstruct(texts), texts) >= 0.5


def test_its_prior_is_the_fitted_exemplar_prior_and_samples_are_sentences(wordnet):
    from textvae.prior import ExemplarPrior

    assert isinstance(wordnet.prior, ExemplarPrior) and bool(wordnet.prior.fitted)
    samples = wordnet.sample(20, seed=0)
    assert len(samples) == 20 and all(s.strip() for s in samples)
    assert wordnet.sample(20, seed=0) == samples  # a seed fixes them
    assert len(set(samples)) >= 15


def test_completions_keep_the_prefix(wordnet):
    completions = wordnet.complete("the man", n=3, seed=0)
    assert len(completions) == 3 and all(c.startswith("the man ") for c in completions)


def test_an_interpolation_starts_and_ends_at_its_sentences(wordnet):
    start, end = "a dying civilization", "food is plentiful"
    path = wordnet.interpolate(start, end, steps=5)
    assert path[0] == start and path[-1] == end


def test_the_cli_finds_it_from_an_empty_folder(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "textvae", "-q", "sample", "wordnet", "-n", "3", "--seed", "0"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_its_card_says_what_the_results_file_measured():
    card = builtin.model_card("wordnet")
    results = json.loads((ROOT / "results" / "builtin.json").read_text())
    assert card == results["card"]
    assert card["figures"]["exact match (test)"] == f"{100 * results['vae_eval']['exact_match']:.1f}%"
