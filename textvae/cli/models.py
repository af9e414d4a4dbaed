"""``textvae models`` (the built-in models and their figures) and
``textvae fit-prior RUN`` (the second-stage prior of a trained run)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from .. import builtin
from ..builtin import builtin_names, model_card
from ..errors import TextVAEError
from ..prior import FITTED_PRIORS
from .args import seed

log = logging.getLogger("textvae")


def register(commands) -> None:
    p = commands.add_parser("models", help="list the built-in pretrained models with their figures",
                            description="Built-in models work wherever a RUN is accepted, e.g. "
                                        "`textvae sample wordnet -n 5`.")
    p.add_argument("--json", action="store_true", help="print each model's card as one JSON line")
    p.set_defaults(handler=_models)

    p = commands.add_parser("fit-prior", help="fit a second-stage prior to a run's latent codes",
                            description="Fits a second prior to the posteriors of the training sentences and makes "
                                        "it the run's prior (model.prior) for sample, complete and eval: a "
                                        "full-covariance Gaussian mixture over their means (--kind gmm; two-stage "
                                        "VAE, Dai & Wipf 2019) or the posteriors of --components of them "
                                        "(--kind exemplar; Norouzi et al. 2020).")
    p.add_argument("run", metavar="RUN", help="run directory of a trained model")
    p.add_argument("--data", help="training sentences (default: the run's data.path)")
    p.add_argument("--kind", choices=FITTED_PRIORS, default=None,
                   help="default: the run's model.prior where it is one of these, else gmm")
    p.add_argument("--components", type=int, default=None,
                   help="mixture components or exemplars (default: model.prior_components)")
    p.add_argument("--max-sentences", type=int, default=20000, help="fit on at most this many (seeded sample)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.set_defaults(handler=_fit_prior)


def _models(args: argparse.Namespace) -> None:
    names = builtin_names()
    if not names:
        raise TextVAEError(f"no built-in models are installed (looked in {builtin.PRETRAINED_DIR})")
    for name in names:
        card = model_card(name)
        if args.json:
            print(json.dumps({"name": name, **card}))
            continue
        print(f"{name}: {card.get('description', '')}")
        for key, value in card.get("figures", {}).items():
            print(f"  {key}: {value}")
        if card.get("example"):
            print(f"  try: {card['example']}")


def _fit_prior(args: argparse.Namespace) -> None:
    import random

    from ..data import read_texts
    from ..model import TextVAE
    from ..operations import fit_prior
    from ..run_folder import CONFIG_FILE, WEIGHTS_FILE, save_weights, write_json_atomic
    from ..runtime import resolve_device

    run = builtin.builtin_or_path(args.run)
    if not run.is_dir():
        raise TextVAEError(f"{run} is not a run directory (no such folder)")
    if builtin.is_builtin(run):
        raise TextVAEError("built-in models are read-only; copy the folder to fit a new prior")
    if args.components is not None and args.components < 1 or args.max_sentences < 2:
        raise TextVAEError("need --components >= 1 and --max-sentences >= 2")
    model = TextVAE.from_pretrained(run, device=resolve_device(args.device))
    data = args.data or model.config.data.path
    if not data:
        raise TextVAEError(f"{run}/config.json records no data path; give --data")
    texts = [t for t in read_texts(data, ["train"], model.config.data.text_column)["train"] if t.strip()]
    if len(texts) > args.max_sentences:
        texts = random.Random(args.seed).sample(texts, args.max_sentences)
    kind = args.kind or (model.config.model.prior if model.config.model.prior in FITTED_PRIORS else "gmm")
    figures = fit_prior(model, texts, args.components, seed=args.seed, kind=kind)
    save_weights(model, run / WEIGHTS_FILE)
    write_json_atomic(run / CONFIG_FILE, model.config.to_dict())
    fitted = (f"mixture prior: {figures['components']} components fitted to {figures['points']:,} posterior means "
              f"in {figures['iterations']} EM steps" if kind == "gmm" else
              f"exemplar prior: the posteriors of {figures['components']:,} training sentences")
    log.info(f"{fitted}; mean log-density of the posterior means it was fitted to: {figures['log_likelihood']:.2f} nats "
             f"(N(0, I): {figures['normal_log_likelihood']:.2f}); {run} now samples from it")
