"""``textvae serve``'s JSON API on the tiny trained run: each answer against
the package's own operations, and every kind of bad request refused with a
4xx ``{"error": ...}`` while the server goes on."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from serve_support import make_explorer, running_server  # noqa: E402

from textvae import operations  # noqa: E402
from textvae.serve.app import create_app  # noqa: E402
from conftest import TRAIN  # noqa: E402


@pytest.fixture(scope="module")
def explorer(trained_run):
    return make_explorer(trained_run)


@pytest.fixture(scope="module")
def client(explorer):
    return TestClient(create_app(explorer), raise_server_exceptions=False)


def post(client, path, body):
    answer = client.post(path, json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_page_is_served_without_external_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "textvae explorer" in page.text
    assert "http://" not in page.text.replace("http://www.w3.org/2000/svg", "") and "https://" not in page.text


def test_info(client, explorer):
    info = client.get("/api/info").json()
    assert info["latent_dim"] == 4 and info["parameters"] == sum(p.numel() for p in explorer.model.parameters())
    assert info["config"]["model"]["latent_dim"] == 4
    assert info["tokenizer"]["source"] == "word" and info["tokenizer"]["vocab_size"] > 10
    assert info["evaluation"] is None  # the tiny run was never evaluated
    latent = info["latent"]
    assert len(latent["kl_per_dim"]) == 4 and len(latent["au_variances"]) == 4
    assert latent["kl"] == pytest.approx(sum(latent["kl_per_dim"]), abs=1e-3)
    assert 0 <= latent["active_units"] <= 4 and isinstance(latent["mi"], float)
    assert latent["sources"]["au"].startswith("map sample")
    assert info["curves"]["train"] and info["curves"]["valid"]
    assert {"step", "rec", "kl"} <= set(info["curves"]["train"][0])
    assert info["map"]["available"] and info["map"]["method"] == "pca"
    assert info["limits"]["max_n"] == 8


def test_encode_decode_match_the_operations(client, explorer):
    model = explorer.model
    answer = post(client, "/api/encode", {"sentences": TRAIN[:2]})
    q = model.encode(TRAIN[:2])
    assert torch.allclose(torch.tensor(answer["mean"]), q.mean, atol=1e-4)
    assert torch.allclose(torch.tensor(answer["logvar"]), q.logvar, atol=1e-4)
    decoded = post(client, "/api/decode", {"z": q.mean.tolist(), "strategy": "greedy"})
    assert decoded["sentences"] == model.reconstruct(TRAIN[:2])


def test_interpolate_matches_the_operation(client, explorer):
    a, b = TRAIN[0], TRAIN[5]
    answer = post(client, "/api/interpolate", {"a": a, "b": b, "steps": 5, "method": "slerp"})
    assert answer["sentences"] == explorer.model.interpolate(a, b, 5, method="slerp")
    means = explorer.model.encode([a, b]).mean
    assert len(answer["z"]) == 5 and torch.allclose(torch.tensor(answer["z"])[[0, -1]], means, atol=1e-4)
    linear = post(client, "/api/interpolate", {"a": a, "b": b, "steps": 3, "method": "linear"})
    assert linear["sentences"] == explorer.model.interpolate(a, b, 3, method="linear")


def test_sample_and_complete(client, explorer):
    answer = post(client, "/api/sample", {"n": 4, "temperature": 0.8, "top_p": 0.9, "seed": 3})
    assert answer["sentences"] == explorer.model.sample(4, seed=3, temperature=0.8, top_p=0.9)
    assert post(client, "/api/sample", {})["sentences"].__len__() == 8
    cooled = post(client, "/api/sample", {"n": 8, "seed": 3, "prior_temperature": 0.1})["sentences"]
    assert cooled == explorer.model.sample(8, seed=3, prior_temperature=0.1) != explorer.model.sample(8, seed=3)
    completions = post(client, "/api/complete", {"prefix": "the cat", "n": 3, "seed": 0})["sentences"]
    assert len(completions) == 3 and all(s.startswith("the cat") for s in completions)


def test_known_words_in_the_api(client, explorer):
    words = set(explorer.model.tokenizer.words)
    info = client.get("/api/info").json()
    assert info["tokenizer"]["words"] == len(words) > 0 and info["config"]["model"]["known_words"] is False
    body = {"n": 8, "temperature": 3.0, "seed": 1}
    held = post(client, "/api/sample", {**body, "known_words": True})["sentences"]
    assert held == explorer.model.sample(8, seed=1, temperature=3.0, words=True)
    assert {w for s in held for w in s.split()} <= words
    assert post(client, "/api/sample", {**body, "known_words": False})["sentences"] == post(client, "/api/sample",
                                                                                             body)["sentences"]
    completions = post(client, "/api/complete", {"prefix": "the cat", "n": 4, "seed": 0, "temperature": 3.0,
                                                 "known_words": True})["sentences"]
    assert {w for s in completions for w in s.split()} <= words
    assert client.post("/api/sample", json={"known_words": "yes"}).status_code == 422


def test_map_places_new_sentences_on_the_training_map(client, explorer):
    training = client.get("/api/map").json()
    assert training["available"] and len(training["points"]) == len(training["sentences"]) == len(set(TRAIN))
    sentence = training["sentences"][7]
    placed = post(client, "/api/map", {"sentences": [sentence, "a dog sat on the mat"]})["points"]
    assert placed[0] == pytest.approx(training["points"][7], abs=1e-3) and len(placed) == 2
    z = explorer.model.encode([sentence]).mean.tolist()
    assert post(client, "/api/map", {"z": z})["points"][0] == pytest.approx(placed[0], abs=1e-3)
    # A map point maps back to a latent code on the PCA plane, which maps to the same point.
    answer = post(client, "/api/map/decode", {"points": [[0.5, -0.25]]})
    assert len(answer["sentences"]) == 1
    assert post(client, "/api/map", {"z": answer["z"]})["points"][0] == pytest.approx([0.5, -0.25], abs=1e-3)
    assert answer["sentences"] == post(client, "/api/decode", {"z": answer["z"]})["sentences"]


def test_neighbours_of_a_training_sentence_start_with_itself(client):
    answer = post(client, "/api/neighbours", {"sentences": [TRAIN[3]], "k": 3})
    assert answer["sentences"][0][0] == TRAIN[3] and answer["distances"][0][0] == pytest.approx(0, abs=1e-3)
    assert len(answer["points"][0]) == 3


def test_arithmetic_and_attribute_vectors(client, explorer):
    a, b, c = TRAIN[0], TRAIN[1], TRAIN[2]
    answer = post(client, "/api/arithmetic", {"a": a, "b": b, "c": c})
    means = explorer.model.encode([a, b, c]).mean
    expected = (means[0] - means[1] + means[2]).unsqueeze(0)
    assert torch.allclose(torch.tensor(answer["z"]), expected, atol=1e-4)
    assert answer["sentences"] == operations.decode(explorer.model, expected)
    body = {"sentence": a, "positive": [TRAIN[5], TRAIN[6]], "negative": [TRAIN[7]], "strength": 0.0}
    unchanged = post(client, "/api/arithmetic", body)
    assert unchanged["sentences"] == explorer.model.reconstruct([a])
    moved = post(client, "/api/arithmetic", {**body, "strength": 2.0})
    m = explorer.model.encode([a, TRAIN[5], TRAIN[6], TRAIN[7]]).mean
    assert torch.allclose(torch.tensor(moved["z"][0]), m[0] + 2 * (m[1:3].mean(0) - m[3]), atol=1e-4)


BAD_REQUESTS = [  # (path, body, status, words in the error)
    ("/api/encode", b"{not json", 400, "not valid JSON"),
    ("/api/encode", b"", 400, "JSON object"),
    ("/api/encode", [1, 2], 422, "dictionary"),
    ("/api/encode", {}, 422, "sentences"),
    ("/api/encode", {"sentences": "the cat"}, 422, "sentences"),
    ("/api/encode", {"sentences": [1]}, 422, "sentences.0"),
    ("/api/encode", {"sentences": []}, 422, "at least one"),
    ("/api/encode", {"sentences": ["the cat"] * 7}, 422, "limit is 6"),
    ("/api/encode", {"sentences": ["x" * 101]}, 422, "limit is 100"),
    ("/api/encode", {"sentences": ["  "]}, 422, "empty"),
    ("/api/encode", {"sentences": ["zzzz qqqq"]}, 422, "unknown"),
    ("/api/encode", {"sentences": ["the cat"], "extra": 1}, 422, "extra"),
    ("/api/decode", {"z": [[0.0, 0.0]]}, 422, "latent_dim is 4"),
    ("/api/decode", {"z": []}, 422, "at least one"),
    ("/api/decode", {"z": [[0, 0, 0, "a"]]}, 422, "z.0.3"),
    ("/api/decode", {"z": [[0.0] * 4] * 7}, 422, "limit is 6"),
    ("/api/decode", {"z": [[0.0] * 4], "strategy": "magic"}, 422, "strategy"),
    ("/api/decode", b'{"z": [[NaN, 0, 0, 0]]}', 422, "finite"),
    ("/api/decode", {"z": [[0.0] * 4], "temperature": 0}, 422, "temperature"),
    ("/api/interpolate", {"a": "the cat"}, 422, "b"),
    ("/api/interpolate", {"a": "the cat", "b": "the dog", "steps": 10}, 422, "between 2 and 9"),
    ("/api/interpolate", {"a": "the cat", "b": "the dog", "steps": 1}, 422, "between 2 and 9"),
    ("/api/interpolate", {"a": "the cat", "b": "the dog", "steps": "3"}, 422, "steps"),
    ("/api/interpolate", {"a": "the cat", "b": "the dog", "method": "cubic"}, 422, "method"),
    ("/api/interpolate", {"a": "x" * 101, "b": "the dog"}, 422, "limit is 100"),
    ("/api/sample", {"n": 9}, 422, "between 1 and 8"),
    ("/api/sample", {"n": 0}, 422, "between 1 and 8"),
    ("/api/sample", {"n": True}, 422, "n"),
    ("/api/sample", {"n": 2.5}, 422, "n"),
    ("/api/sample", {"top_p": 1.5}, 422, "top_p"),
    ("/api/sample", {"seed": "x"}, 422, "seed"),
    ("/api/sample", {"prior_temperature": 0}, 422, "prior_temperature"),
    ("/api/complete", {"prefix": ""}, 422, "empty"),
    ("/api/complete", {"prefix": "the", "n": 100}, 422, "between 1 and 8"),
    ("/api/complete", {"n": 2}, 422, "prefix"),
    ("/api/map", {}, 422, "either"),
    ("/api/map", {"sentences": ["the cat"], "z": [[0.0] * 4]}, 422, "either"),
    ("/api/map/decode", {"points": [[1.0]]}, 422, "[x, y]"),
    ("/api/map/decode", {"points": [[0.0, 0.0]] * 7}, 422, "limit is 6"),
    ("/api/neighbours", {"sentences": ["the cat"], "k": 0}, 422, "k must be"),
    ("/api/arithmetic", {"a": "the cat", "b": "the dog"}, 422, "either"),
    ("/api/arithmetic", {"a": "the cat", "b": "the dog", "c": "a man", "sentence": "the sun"}, 422, "either"),
    ("/api/arithmetic", {"sentence": "the cat", "positive": [], "negative": ["the dog"]}, 422, "at least one"),
    ("/api/arithmetic", {"sentence": "the cat", "positive": ["a"], "negative": ["b"], "strength": 99.0}, 422,
     "strength"),
]


@pytest.mark.parametrize("path,body,status,words", BAD_REQUESTS)
def test_bad_requests_get_a_json_error(client, path, body, status, words):
    if isinstance(body, bytes):
        answer = client.post(path, content=body, headers={"Content-Type": "application/json"})
    else:
        answer = client.post(path, json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert isinstance(error, str) and words.lower() in error.lower(), error


def test_other_refusals_and_the_server_goes_on(client):
    assert client.get("/api/nothing").status_code == 404 and "error" in client.get("/api/nothing").json()
    assert client.get("/api/encode").status_code == 405 and "error" in client.get("/api/encode").json()
    huge = client.post("/api/encode", content=b"{" + b" " * (2 << 20) + b"}",
                       headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and "larger" in huge.json()["error"]
    assert client.get("/api/info").status_code == 200


def test_an_internal_failure_is_a_json_500_and_the_server_goes_on(client, explorer, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(operations, "sample", broken)
    answer = client.post("/api/sample", json={"n": 1})
    assert answer.status_code == 500 and "boom" in answer.json()["error"]
    monkeypatch.undo()
    assert client.post("/api/sample", json={"n": 1}).status_code == 200


def test_concurrent_clients_are_queued_one_model_call_at_a_time(explorer, monkeypatch):
    inside, most = [0], [0]
    real = operations.decode

    def slow_decode(*args, **kwargs):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.02)
        inside[0] -= 1
        return real(*args, **kwargs)

    monkeypatch.setattr(operations, "decode", slow_decode)
    with running_server(create_app(explorer)) as url:
        answers = []

        def ask(i: int) -> None:
            body = json.dumps({"a": TRAIN[i], "b": TRAIN[i + 1], "steps": 3}).encode()
            request = urllib.request.Request(url + "/api/interpolate", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                answers.append(json.loads(response.read())["sentences"])

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert len(answers) == 8 and all(len(a) == 3 for a in answers)
    assert most[0] == 1


def test_stored_evaluation_is_preferred_and_a_missing_map_is_explained(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "eval_test.json").write_text(json.dumps({"split": "test", "nll": 21.5, "kl": 1.25, "mi": 0.5, "au": 1,
                                                    "au_variances": [0.5, 0.001, 0.002, 0.003]}))
    config = json.loads((run / "config.json").read_text())
    config["data"]["path"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(config))
    client = TestClient(create_app(make_explorer(run)))
    info = client.get("/api/info").json()
    assert info["evaluation"]["nll"] == 21.5 and info["evaluation"]["file"] == "eval_test.json"
    latent = info["latent"]
    assert latent["active_units"] == 1 and latent["mi"] == 0.5 and latent["kl"] == 1.25
    assert latent["kl_per_dim"] is None  # no map sample to compute it on
    assert not info["map"]["available"] and "--map-data" in info["map"]["reason"]
    assert client.get("/api/map").json()["available"] is False
    refused = client.post("/api/map", json={"sentences": ["the cat"]})
    assert refused.status_code == 409 and "no map" in refused.json()["error"]
    assert client.post("/api/encode", json={"sentences": ["the cat"]}).status_code == 200
    # --map-data draws the map from a file instead.
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(TRAIN[:20]) + "\n")
    with_file = TestClient(create_app(make_explorer(run, data=str(lines), size=10)))
    assert len(with_file.get("/api/map").json()["points"]) == 10


class FakeUMAP:
    """Stands in for umap.UMAP: the first two coordinates, and back with zeros."""

    def __init__(self, n_components: int, random_state: int, n_neighbors: int) -> None:
        self.width = None

    def fit(self, x):
        self.width = x.shape[1]
        return self

    def transform(self, x):
        return x[:, :2]

    def inverse_transform(self, points):
        import numpy

        return numpy.concatenate([points, numpy.zeros((len(points), self.width - 2))], axis=1)


def test_umap_projection_where_umap_learn_is_installed(trained_run, monkeypatch):
    import sys
    import types

    from textvae.errors import TextVAEError

    monkeypatch.setitem(sys.modules, "umap", None)  # not installed: a start-up error
    with pytest.raises(TextVAEError, match="umap-learn"):
        make_explorer(trained_run, projection="umap")
    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=FakeUMAP))
    client = TestClient(create_app(make_explorer(trained_run, projection="umap")))
    assert client.get("/api/map").json()["method"] == "umap"
    z = [[0.25, -0.5, 0.0, 0.0]]
    assert post(client, "/api/map", {"z": z})["points"] == [[0.25, -0.5]]
    assert post(client, "/api/map/decode", {"points": [[0.25, -0.5]]})["z"] == z
