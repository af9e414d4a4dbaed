"""Property-based inputs (Hypothesis) to the data reader, the tokenizer front
end, config parsing and the generation commands: random bytes, huge lines,
control characters, byte-order marks, right-to-left text and emoji, NaN and
infinite numbers, integers past 64 bits. Whatever comes in, the answer is a
result or one ``TextVAEError`` (on the command line: exit 0, or one
``textvae: error:`` line and exit 2), never a traceback, and memory stays
bounded. Sized to run in well under a minute on the tiny trained run."""

import itertools
import resource

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from textvae.config import Config, TokenizerConfig, build_config
from textvae.config_tree import read_config_file
from textvae.data import read_texts, tokenize_split
from textvae.errors import TextVAEError
from textvae.tokenization import build_tokenizer

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# Text as people and files deliver it, at its worst.
ODD = ["\ufeff", "\x00", "\x1b[31m", "\r", "\u202e", "\u200f", "\u0645\u0631\u062d\u0628\u0627", "\U0001F600",
       "\U0001F469\u200d\U0001F4BB", "\u0301", "\ud7ff", "\t", "\x85", "\u2028", "<unk>", "<s>", "</s>", "<pad>"]
WORDS = ["the", "cat", "sat", "on", "mat", "dog", "park", "zebra"]
text = st.lists(st.one_of(st.sampled_from(ODD), st.sampled_from(WORDS), st.text(max_size=8)), max_size=12) \
    .map(" ".join)
long_line = st.sampled_from(WORDS).map(lambda w: (w + " ") * 5_000)  # past every cap on tokens
# Mostly words the model knows, with odd characters between them: sentences that get decoded.
sentence = st.lists(st.one_of(st.sampled_from(WORDS), st.sampled_from(WORDS), st.sampled_from(ODD)), min_size=1,
                    max_size=8).map(" ".join)
any_text = st.one_of(text, long_line, st.text(max_size=200))
any_bytes = st.one_of(st.binary(max_size=400), any_text.map(lambda t: t.encode("utf-8", "surrogatepass")),
                      any_text.map(lambda t: b"\xef\xbb\xbf" + t.encode("utf-8", "surrogatepass")))
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["nan", "inf", "-inf", ".inf", "-.nan", "1e309", "-0", "1e-320", "0x10", "1_000"]),
                    st.integers(-2**80, 2**80).map(str), st.sampled_from(["9" * 5000, "-" + "9" * 400]),
                    st.text(max_size=12))


def ok_or_one_error(result) -> None:
    assert "Traceback" not in result.err
    if result.code == 0:
        return
    assert result.code == 2, result
    assert len(result.err_lines) == 1 and result.err_lines[0].startswith("textvae: error: "), result.err


# ------------------------------------------------------------ data reader
counter = itertools.count()


@FUZZ
@given(content=any_bytes, lines=st.integers(1, 3))
def test_the_data_reader_reads_or_refuses(tmp_path, word_tokenizer, content, lines):
    path = tmp_path / f"data{next(counter)}.txt"  # a new name each time: no reader cache can answer
    path.write_bytes(b"\n".join([content] * lines))
    try:
        texts = read_texts(str(path), ["train", "valid"])
    except TextVAEError:
        return
    assert set(texts) == {"train", "valid"}
    for name, sentences in texts.items():
        assert all(isinstance(s, str) for s in sentences)
        try:
            split = tokenize_split(name, sentences, word_tokenizer, max_length=20)
        except TextVAEError:
            continue
        assert all(0 < len(ids) <= 20 for ids in split.ids)


# ------------------------------------------------------ tokenizer front end
@FUZZ
@given(value=any_text)
def test_the_tokenizer_front_end_never_breaks(word_tokenizer, value):
    ids = word_tokenizer.encode(value)
    assert all(0 <= i < word_tokenizer.vocab_size for i in ids)
    shown = word_tokenizer.decode(ids)
    assert not any(ch in shown for ch in "\x00\x1b\ufeff\x85")  # nothing raw reaches a terminal


@settings(max_examples=8, deadline=None, derandomize=True, database=None)
@given(texts=st.lists(st.one_of(text, st.text(max_size=200)), min_size=1, max_size=4),
       spec=st.sampled_from(["word", "bpe"]))
def test_a_tokenizer_trains_on_anything_or_refuses(texts, spec):
    try:
        tokenizer = build_tokenizer(TokenizerConfig(spec=spec, vocab_size=300), texts)
    except TextVAEError:
        return
    for value in texts:
        assert all(0 <= i < tokenizer.vocab_size for i in tokenizer.encode(value))


# -------------------------------------------------------------- config
KEYS = [f"{section}.{name}" for section, fields in Config().to_dict().items() for name in fields]


@FUZZ
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=20)), value=st.one_of(numbers, any_text))
def test_set_overrides_build_a_config_or_refuse(key, value):
    try:
        config = build_config(None, [f"{key}={value}"])
    except TextVAEError:
        return
    assert isinstance(config, Config)


yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), text),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=3), max_leaves=8)
config_trees = st.dictionaries(st.sampled_from(["model", "train", "data", "tokenizer", "objective", "other"]),
                               st.one_of(st.dictionaries(st.sampled_from([k.split(".")[1] for k in KEYS]),
                                                         yaml_values, max_size=3), yaml_values), max_size=3)


@FUZZ
@given(content=st.one_of(config_trees.map(lambda t: yaml.safe_dump(t).encode()), any_bytes),
       suffix=st.sampled_from([".yaml", ".json"]))
def test_config_files_build_a_config_or_refuse(tmp_path, content, suffix):
    path = tmp_path / f"config{suffix}"
    path.write_bytes(content)
    try:
        config = Config.from_dict(read_config_file(path))
    except TextVAEError:
        return
    assert isinstance(config, Config)


# -------------------------------------------------- generation arguments
# Each example sets every option to a sane value but for up to two wild ones,
# so that most examples decode (with odd settings) and some are refused.
SANE = {"n": st.integers(1, 3), "temperature": st.floats(0.05, 5), "top-k": st.integers(0, 100),
        "top-p": st.floats(0.05, 1), "beam-size": st.integers(1, 3), "length-penalty": st.floats(-2, 2),
        "max-length": st.integers(1, 30), "seed": st.integers(0, 2**63 - 1)}
counts = st.one_of(st.integers(-2, 0), st.integers(10**6, 10**40), st.sampled_from(["", "x", "1.5", "nan"]))
WILD = {"n": counts, "temperature": numbers, "top-k": counts, "top-p": numbers, "length-penalty": numbers,
        "beam-size": st.one_of(st.integers(-1, 0), st.integers(65, 10**30), st.sampled_from(["", "two"])),
        "max-length": st.one_of(st.integers(-2, 0), st.integers(1025, 10**40), st.sampled_from(["", "1e3"])),
        "seed": numbers}


@st.composite
def options(draw) -> dict:
    wild = draw(st.sets(st.sampled_from(sorted(WILD)), max_size=2))
    return {name: str(draw(WILD[name] if name in wild else SANE[name])) for name in SANE}


@pytest.fixture(scope="module")
def memory_start():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


outcomes: dict = {}


@FUZZ
@given(command=st.sampled_from(["sample", "reconstruct", "complete", "interpolate"]),
       texts=st.lists(st.one_of(sentence, any_text), min_size=2, max_size=2), values=options(),
       strategy=st.sampled_from(["greedy", "sample", "beam"]))
def test_generation_arguments_give_a_result_or_one_error_line(cli, trained_run, memory_start, command, texts, values,
                                                              strategy):
    n = values.pop("n")
    if command == "sample" and n.isdigit() and int(n) > 3:
        n = "3"  # sample -n streams without end for any n; the others refuse counts past their caps
    args = [command, f"--strategy={strategy}", *[f"--{name}={value}" for name, value in values.items()]]
    args += {"sample": [f"-n={n}"], "reconstruct": [], "complete": [f"-n={n}", "--proposals=16"],
             "interpolate": [f"--steps={n}"]}[command]
    # The positionals last, after "--": a text may begin with "-".
    args += ["--", trained_run] + {"sample": [], "reconstruct": texts, "complete": texts[:1],
                                   "interpolate": texts}[command]
    result = cli(*args)
    ok_or_one_error(result)
    outcomes[result.code] = outcomes.get(result.code, 0) + 1
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - memory_start
    assert grown < 1_000_000  # KiB: nothing sized by a huge argument was ever built


def test_the_fuzzed_commands_both_ran_and_refused():
    """The generation fuzz above exercised decoding, not only the argument checks."""
    if not outcomes:
        pytest.skip("runs after the generation fuzz")
    assert outcomes.get(0, 0) >= 5 and outcomes.get(2, 0) >= 3, outcomes


@FUZZ
@given(stdin=any_bytes)
def test_sentences_on_stdin_give_a_result_or_one_error_line(cli, trained_run, stdin):
    for command in ("reconstruct", "encode"):
        ok_or_one_error(cli(command, trained_run, "--max-length=5" if command == "reconstruct" else "--device=cpu",
                            stdin=stdin))
