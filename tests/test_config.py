"""Config tree: defaults, validation, unknown keys, --set typing, files, presets."""

import json

import pytest

from textvae.config import Config, build_config, list_presets, read_config_file
from textvae.errors import TextVAEError


def test_defaults_are_valid_and_round_trip_through_json(tmp_path):
    config = Config()
    config.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json") == config
    assert Config.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("section, key, value", [
    ("model", "embed_dim", -1),
    ("model", "hidden_dim", 0),
    ("model", "latent_dim", -4),
    ("model", "dropout", 1.0),
    ("model", "weight_drop", 1.0),
    ("model", "latent_to_decoder", "sideways"),
    ("model", "sample_strategy", "nucleus"),
    ("model", "prior_temperature", 0.0),
    ("model", "prior_temperature", float("nan")),
    ("data", "max_length", 0),
    ("tokenizer", "spec", ""),
    ("objective", "kl_schedule", "exponential"),
    ("objective", "free_bits", -0.5),
    ("objective", "bow_weight", -1.0),
    ("train", "optimizer", "rmsprop"),
    ("train", "lr", 0.0),
    ("train", "batch_size", -8),
    ("train", "device", "tpu"),
])
def test_invalid_values_raise_and_name_the_field(section, key, value):
    with pytest.raises(TextVAEError, match=f"{section}.{key}"):
        Config.from_dict({section: {key: value}})


def test_weight_drop_needs_an_lstm():
    with pytest.raises(TextVAEError, match="model.weight_drop applies to LSTM"):
        Config.from_dict({"model": {"encoder": "transformer", "decoder": "transformer", "weight_drop": 0.3}})
    assert Config.from_dict({"model": {"encoder": "transformer", "weight_drop": 0.3}}).model.weight_drop == 0.3


def test_an_image_model_refuses_the_bag_of_words_loss():
    from textvae.image.config import ImageConfig

    with pytest.raises(TextVAEError, match="objective.bow_weight is for text models"):
        ImageConfig.from_dict({"objective": {"bow_weight": 1.0}})


@pytest.mark.parametrize("section, key, value", [
    ("model", "latent_dim", "16"),
    ("model", "latent_dim", 1.5),
    ("model", "bidirectional", "yes please"),
    ("train", "lr", True),
    ("train", "optimizer", 3),
])
def test_wrongly_typed_values_raise(section, key, value):
    with pytest.raises(TextVAEError, match=f"{section}.{key}"):
        Config.from_dict({section: {key: value}})


@pytest.mark.parametrize("raw, dotted", [
    ({"model": {"latent_size": 3}}, "model.latent_size"),
    ({"train": {"learning_rate": 0.1}}, "train.learning_rate"),
    ({"modle": {}}, "modle"),
])
def test_unknown_keys_are_rejected_with_their_dotted_name(raw, dotted):
    with pytest.raises(TextVAEError, match=f"unknown config key '{dotted}'"):
        Config.from_dict(raw)


@pytest.mark.parametrize("override, message", [
    ("model.latent_size=3", "model.latent_size"),
    ("modle.latent_dim=3", "modle"),
    ("latent_dim=3", "SECTION.FIELD"),
    ("model.latent_dim", "KEY=VALUE"),
    ("model.latent_dim=many", "model.latent_dim"),
    ("train.optimizer=rmsprop", "train.optimizer"),
])
def test_bad_overrides_raise(override, message):
    with pytest.raises(TextVAEError, match=message):
        build_config(overrides=[override])


@pytest.mark.parametrize("override, section, key, expected", [
    ("model.latent_dim=16", "model", "latent_dim", 16),
    ("train.lr=0.5", "train", "lr", 0.5),
    ("train.lr=2", "train", "lr", 2.0),
    ("train.lr=1e-3", "train", "lr", 1e-3),
    ("train.lr=3.0e-4", "train", "lr", 3e-4),
    ("model.bidirectional=true", "model", "bidirectional", True),
    ("model.bidirectional=false", "model", "bidirectional", False),
    ("train.optimizer=sgd", "train", "optimizer", "sgd"),
    # String fields keep the text as typed, even when it looks like a number.
    ("data.path=007", "data", "path", "007"),
    ("tokenizer.spec=1e3", "tokenizer", "spec", "1e3"),
    ("data.path=a=b", "data", "path", "a=b"),
])
def test_overrides_are_typed_by_the_field(override, section, key, expected):
    value = getattr(getattr(build_config(overrides=[override]), section), key)
    assert value == expected
    assert type(value) is type(expected)


def test_later_overrides_win_and_leave_other_fields_alone():
    config = build_config(overrides=["model.latent_dim=8", "model.latent_dim=2"])
    assert config.model.latent_dim == 2
    assert config.model.hidden_dim == Config().model.hidden_dim


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_config_files_load_and_overrides_apply_on_top(tmp_path, suffix):
    raw = {"model": {"latent_dim": 7, "bidirectional": True}, "train": {"lr": 0.25, "optimizer": "sgd"}}
    path = tmp_path / f"config{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(raw))
    else:
        path.write_text("model:\n  latent_dim: 7\n  bidirectional: true\ntrain:\n  lr: 0.25\n  optimizer: sgd\n")
    assert read_config_file(path) == raw
    config = build_config(str(path), ["model.latent_dim=3"])
    assert (config.model.latent_dim, config.model.bidirectional, config.train.lr, config.train.optimizer) == \
        (3, True, 0.25, "sgd")


def test_config_files_layer_in_order(tmp_path):
    (tmp_path / "a.yaml").write_text("model:\n  latent_dim: 7\n  hidden_dim: 64\n")
    (tmp_path / "b.json").write_text('{"model": {"latent_dim": 5}}')
    config = build_config([str(tmp_path / "a.yaml"), str(tmp_path / "b.json")])
    assert (config.model.latent_dim, config.model.hidden_dim) == (5, 64)


def test_yaml_reads_exponent_floats(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  lr: 1e-4\n")
    assert build_config(str(path)).train.lr == pytest.approx(1e-4)


@pytest.mark.parametrize("name, text", [
    ("broken.yaml", "model: [unclosed\n"),
    ("broken.json", "{not json"),
    ("list.yaml", "- 1\n- 2\n"),
    ("unknown.yaml", "model:\n  latent_size: 3\n"),
])
def test_bad_config_files_raise(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    with pytest.raises(TextVAEError):
        build_config(str(tmp_path / name))


def test_missing_config_file_raises():
    with pytest.raises(TextVAEError, match="does not exist"):
        build_config("/nonexistent/config.yaml")


@pytest.mark.parametrize("preset", list_presets() or [pytest.param(None, marks=pytest.mark.skip("no presets"))])
def test_presets_load_by_name(preset):
    kind = read_config_file(preset).get("kind", "text")
    if kind == "image":
        from textvae.image.config import ImageConfig, build_image_config

        assert isinstance(build_image_config(preset), ImageConfig)
    else:
        assert kind == "text"
        assert isinstance(build_config(preset), Config)
