"""A stopped importance-weighted NLL goes on where it was (evaluation/journal.py):
the same evaluation, run again, takes the batches done from the journal and
ends with the same figures, bitwise, as a run without a break; a journal of
other weights, data or settings, or one that cannot be read, starts afresh;
``textvae eval`` removes it once the results are written."""

import torch
import pytest

from textvae.data import load_splits
from textvae.evaluation.journal import IWJournal
from textvae.evaluation.text_eval import EvalSettings, evaluate_text
from textvae.model import TextVAE

SETTINGS = EvalSettings(iw_samples=12, iw_chunk=4, batch_size=1, num_samples=3)  # one sentence a batch


class Stop(Exception):
    pass


class StoppingJournal(IWJournal):
    """Saves after every batch and stops the evaluation after ``after`` of them."""

    def __init__(self, path, after: int) -> None:
        super().__init__(path, every=0.0)
        self.after = after

    def save(self, pieces, generator_state, final=False):
        saved = super().save(pieces, generator_state, final)
        if len(pieces) >= self.after and not final:
            raise Stop
        return saved


@pytest.fixture(scope="module")
def setup(trained_run, shared_corpus):
    model = TextVAE.from_pretrained(trained_run)
    split = load_splits(str(shared_corpus), model.tokenizer, ["test"], model.config.data.max_length)["test"]
    return model, split


def nll(model, split, journal=None, settings=SETTINGS):
    return evaluate_text(model, split, settings, torch.device("cpu"), journal)["nll"]


def test_a_stopped_evaluation_goes_on_where_it_was_and_ends_the_same(setup, tmp_path):
    model, split = setup
    whole = nll(model, split)
    path = tmp_path / "eval_test.partial.pt"
    with pytest.raises(Stop):
        nll(model, split, StoppingJournal(path, after=3))
    resumed = IWJournal(path)
    assert nll(model, split, resumed) == whole  # bitwise: the sampler's state was kept too
    assert len(resumed.pieces) == 3 and len(split) > 3  # three sentences came from the journal
    assert path.exists()  # kept until the command has written its results


@pytest.mark.parametrize("change", ["settings", "weights", "torn"])
def test_a_journal_of_anything_else_starts_afresh(setup, tmp_path, change):
    model, split = setup
    path = tmp_path / "eval_test.partial.pt"
    with pytest.raises(Stop):
        nll(model, split, StoppingJournal(path, after=2))
    settings = SETTINGS
    if change == "settings":
        settings = EvalSettings(iw_samples=13, iw_chunk=4, batch_size=1, num_samples=3)
    elif change == "weights":
        model = _perturbed(model)
    else:
        path.write_bytes(path.read_bytes()[:40])
    journal = IWJournal(path)
    assert nll(model, split, journal, settings) == nll(model, split, None, settings)
    assert journal.pieces == []  # nothing was taken from the journal


def _perturbed(model):
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.decoder.parameters()).add_(1e-3)
    return other


def test_eval_removes_the_journal_once_the_results_are_written(cli, trained_run, shared_corpus, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "eval_test.partial.pt").write_bytes(b"not a journal")  # a stale one is ignored, then removed
    result = cli("eval", run, "--data", shared_corpus, "--iw-samples", "3", "--samples", "3")
    assert result.code == 0 and (run / "eval_test.json").exists() and not (run / "eval_test.partial.pt").exists()


def test_the_mnist_evaluation_goes_on_where_it_was_too(tmp_path):
    from test_image_model import strokes, tiny_model
    from textvae.image.batches import ImageBatches
    from textvae.image.evaluate import evaluate_images

    model = tiny_model()
    images = ImageBatches(torch.as_tensor(strokes(40)).float().view(-1, 1, 28, 28), None, 8)
    whole = evaluate_images(model, images, 6)["nll"]
    path = tmp_path / "eval_test.partial.pt"
    with pytest.raises(Stop):
        evaluate_images(model, images, 6, journal=StoppingJournal(path, after=2))
    resumed = IWJournal(path)
    assert evaluate_images(model, images, 6, journal=resumed)["nll"] == whole and len(resumed.pieces) == 2


def test_a_stop_in_the_middle_of_a_batch_keeps_the_batches_done(setup, tmp_path):
    """Ctrl-C while a batch is drawn: the journal keeps the batches before it
    and the sampler's state after them (not the half-used one), so the rerun
    still ends bitwise equal; the journal is written at the stop, not only every minute."""
    from textvae.evaluation import likelihood

    model, split = setup
    whole = nll(model, split)
    path = tmp_path / "eval_test.partial.pt"
    original, calls = likelihood.importance_weighted_log_likelihood, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            torch.randn(7, generator=args[4])  # the generator moves on before the stop
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    likelihood.importance_weighted_log_likelihood = interrupted
    try:
        with pytest.raises(KeyboardInterrupt):
            nll(model, split, IWJournal(path, every=3600.0))  # no save by the clock: only the one at the stop
    finally:
        likelihood.importance_weighted_log_likelihood = original
    resumed = IWJournal(path)
    assert nll(model, split, resumed) == whole and len(resumed.pieces) == 3


def test_the_fingerprint_takes_zero_dimensional_buffers():
    """A BN-VAE's batch norm counts its batches in a 0-d integer buffer, and a
    fitted prior flags itself in a 0-d float one: both are fingerprinted, and a
    change to either changes the fingerprint."""
    from textvae.evaluation.journal import fingerprint

    model = torch.nn.BatchNorm1d(3)
    model.register_buffer("fitted", torch.zeros(()))
    first = fingerprint(model, b"data")
    assert fingerprint(model, b"data") == first
    model.num_batches_tracked += 1
    second = fingerprint(model, b"data")
    model.fitted.fill_(1.0)
    assert len({first, second, fingerprint(model, b"data")}) == 3
