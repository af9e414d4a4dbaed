"""``textvae train``: a new run from data and config, or ``--resume RUN``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
from pathlib import Path
from typing import Optional

import torch

from ..config import Config, build_config, list_presets
from ..data import TextBatches, load_splits, read_texts, split_off_validation
from ..errors import TextVAEError
from ..model import TextVAE
from ..run_folder import CONFIG_FILE, TOKENIZER_DIR
from ..tokenization import Tokenizer, build_tokenizer, corpus_words
from ..training import distributed
from ..training.trainer import Trainer
from . import launch

log = logging.getLogger("textvae")


def register(commands) -> None:
    p = commands.add_parser("train", help="train a model (or continue one with --resume)",
                            description="Train a sentence VAE. Config: defaults, then --config FILE (YAML/JSON or a "
                                        f"preset: {', '.join(list_presets())}), then --set overrides.")
    p.add_argument("--data", help="file (one sentence a line), folder with train/valid/test files, or hf:NAME")
    p.add_argument("--out", help="new run directory")
    p.add_argument("--config", action="append", default=[],
                   help="YAML or JSON config file, or a preset name; repeat to layer files (later ones win)")
    p.add_argument("--tokenizer", help="word, bpe, wordpiece, unigram, a tokenizer folder or tokenizer.json, "
                                       "or a hub name (sets tokenizer.spec)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by its dotted name, e.g. model.latent_dim=16 (repeatable)")
    p.add_argument("--resume", metavar="RUN", help="continue the run in RUN from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run folder --out if there is one")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="train for this many minutes (validation included; sets train.time_budget); epochs then "
                        "no longer end the run unless train.epochs or train.max_steps is given with --set")
    p.set_defaults(handler=run)


def budget_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` strings for ``--time-budget``: the budget, and no epoch limit
    unless the command line sets one."""
    if args.time_budget is None:
        return []
    if not (math.isfinite(args.time_budget) and args.time_budget > 0):
        raise TextVAEError(f"--time-budget must be a positive number of minutes, got {args.time_budget:g}")
    limits = any(o.split("=", 1)[0].strip() in ("train.epochs", "train.max_steps") for o in args.overrides)
    return [f"train.time_budget={args.time_budget!r}"] + ([] if limits else ["train.epochs=1000000"])


def run(args: argparse.Namespace) -> int:
    return launch.train(args, TEXT_RUN)


def _start(args: argparse.Namespace, out: Path, cuda_device) -> Trainer:
    """A new text run in ``out``: config, tokenizer (trained on rank 0), model and trainer."""
    overrides = list(args.overrides) + ([f"tokenizer.spec={args.tokenizer}"] if args.tokenizer else []) \
        + budget_overrides(args)
    config = build_config(args.config, overrides, base={"data": {"path": args.data}})
    torch.manual_seed(config.train.seed)
    texts = read_texts(args.data, ["train", "valid"], config.data.text_column)
    if "valid" not in texts:
        texts["train"], texts["valid"] = split_off_validation(texts["train"])
        log.info("no validation split: holding out 5% of the training sentences")
    if distributed.rank() == 0:
        tokenizer = build_tokenizer(config.tokenizer, (t for t in texts["train"] if t.strip()))
        tokenizer.words = corpus_words(texts["train"])  # saved beside it: what --known-words may spell
        model = TextVAE(config, tokenizer)  # built before the folder exists: bad names fail first
        out.mkdir(parents=True, exist_ok=True)
        model.save_files(out)  # the tokenizer, and the configs that rebuild hf: backbones offline
        config.save(out / CONFIG_FILE)  # last: a folder with a config.json has its tokenizer
    distributed.barrier()
    tokenizer = Tokenizer.load(out / TOKENIZER_DIR)
    torch.manual_seed(config.train.seed)  # identical initial weights on every rank
    model = TextVAE(config, tokenizer)
    log.info(f"model: {sum(p.numel() for p in model.parameters()):,} parameters; vocabulary {tokenizer.vocab_size:,}")
    return _trainer(model, config, out, args.data, cuda_device, texts)


def _trainer(model: TextVAE, config: Config, run_dir: Path, data: Optional[str], cuda_device=None,
             texts=None) -> Trainer:
    data = data or config.data.path
    if texts is None:
        texts = read_texts(data, ["train", "valid"], config.data.text_column)
        if "valid" not in texts:
            texts["train"], texts["valid"] = split_off_validation(texts["train"])
    tokenizer = model.tokenizer
    splits = load_splits(data, tokenizer, ["train", "valid"], config.data.max_length, texts=texts)
    # Under torchrun on GPUs each rank trains on its own device; the saved
    # config keeps the device it was given ("auto"), so the run resumes anywhere.
    train_cfg = config.train if cuda_device is None else dataclasses.replace(config.train, device=str(cuda_device))
    train = TextBatches(splits["train"], tokenizer, train_cfg.batch_size, train_cfg.seed, True,
                        config.data.bucket_batches, distributed.rank(), distributed.world_size())
    valid = TextBatches(splits["valid"], tokenizer, train_cfg.eval_batch_size, shuffle=False)
    if train.num_batches(0) == 0:
        raise TextVAEError("the training split has fewer sentences than one batch per process")
    return Trainer(model, train_cfg, config.objective, train, valid, run_dir)


def _initial_model(run_dir: Path, config: Config) -> TextVAE:
    """The model a new run starts with (pretrained backbones loaded as then), from the folder's tokenizer."""
    return TextVAE(config, Tokenizer.load(run_dir / TOKENIZER_DIR))


TEXT_RUN = launch.RunKind("text", "textvae train", "sentence", TextVAE, _start, _trainer, required=("data", "out"),
                          overrides=budget_overrides, distributed=True, initial_model=_initial_model)
