"""What people do with a trained model: sample, reconstruct, encode,
decode, complete and interpolate. Every decoding goes through ``generation.generate``.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import torch
from torch import Tensor

from .data import TextBatch
from .errors import TextVAEError
from .generation import GenerationConfig, generate
from .latent import DiagonalGaussian
from .lexicon import WordConstraint
from .word_cache import word_constraint as cached_word_constraint
from .prior import check_temperature
from .threads import tick

log = logging.getLogger("textvae")


def _generator(model, seed: Optional[int]) -> Optional[torch.Generator]:
    return None if seed is None else torch.Generator(device=model.device).manual_seed(seed)


MAX_GENERATED = 1024  # tokens a sentence; a decoder with learned positions stops at its own table


def length_limit(model) -> int:
    """The most tokens a decoding may run: the decoder's position table (bos
    included) where it has one, else MAX_GENERATED."""
    config = model.config.model
    if config.decoder == "transformer" and config.positions == "learned":
        return max(1, config.max_positions - 1)
    return MAX_GENERATED


def _settings(model, strategy: str, max_length: Optional[int], words=None, **options) -> GenerationConfig:
    limit = length_limit(model)
    if max_length is not None and max_length > limit:
        log.info(f"--max-length {max_length} capped at {limit} tokens (this model's limit)")
    length = min(max_length or model.config.data.max_length, limit)
    return GenerationConfig(strategy=strategy, max_length=length, words=word_constraint(model, words), **options)


def word_constraint(model, words=None) -> Optional[WordConstraint]:
    """What a decoding may spell (lexicon.py). ``words``: None follows the
    run's ``model.known_words``; True holds it to the training corpus's words
    (its tokenizer's word list), False lets it spell anything; a
    ``WordConstraint`` or an iterable of words is a list of one's own (build a
    ``WordConstraint`` once to reuse a long list)."""
    if words is None:
        words = model.config.model.known_words
    if words is False:
        return None
    if words is True:
        return model.word_constraint
    if isinstance(words, WordConstraint):
        return words
    if isinstance(words, str):
        raise TextVAEError("words must be True, False, a WordConstraint or a list of words, not one string")
    return cached_word_constraint(model.tokenizer, words)


def _decode(model, z: Optional[Tensor], n: int, settings: GenerationConfig, generator=None,
            prefixes: Optional[list[list[int]]] = None, not_first: tuple[int, ...] = ()) -> list[list[int]]:
    tok = model.tokenizer
    return generate(model.decoder, z, n, tok.bos_id, tok.eos_id, settings, prefixes, generator, tok.never_generated,
                    not_first)


SAMPLE_CHUNK = 256  # sentences decoded at once by sample_stream: memory stays flat in n


def sample_stream(model, n: int, seed: Optional[int] = None, chunk: int = SAMPLE_CHUNK, **options):
    """``sample`` in chunks of ``chunk`` sentences, yielded as each is
    decoded; one random stream runs through all chunks, so the output is
    reproducible from ``seed`` (and the first chunk's is ``sample``'s)."""
    generator = _generator(model, seed)
    for start in range(0, n, chunk):
        tick()
        yield sample(model, min(chunk, n - start), generator=generator, **options)


@torch.no_grad()
def sample(model, n: int = 10, strategy: Optional[str] = None, seed: Optional[int] = None,
           max_length: Optional[int] = None, generator: Optional[torch.Generator] = None,
           prior_temperature: Optional[float] = None, **options) -> list[str]:
    """n sentences: z from the model's prior (N(0, I), or its fitted mixture), then decoded.
    ``generator`` (instead of ``seed``) continues a random stream; ``prior_temperature``
    T < 1 draws z nearer the prior's modes (prior.py; the decoding's own
    ``temperature`` is another thing). ``strategy`` and ``prior_temperature``
    default to the run's ``model.sample_strategy`` and ``model.prior_temperature``."""
    model.eval()
    strategy = strategy or model.config.model.sample_strategy
    prior_temperature = model.config.model.prior_temperature if prior_temperature is None else prior_temperature
    check_temperature(prior_temperature)
    generator = generator if generator is not None else _generator(model, seed)
    z = None
    if model.has_latent:
        z = model.prior.sample(n, generator, model.device, temperature=prior_temperature)
    return model.tokenizer.decode_batch(_decode(model, z, n, _settings(model, strategy, max_length, **options),
                                                generator))


@torch.no_grad()
def encode(model, texts: list[str]) -> DiagonalGaussian:
    """q(z|x) of each text: mean and logvar (N, D)."""
    model.eval()
    return model.infer(model.batch(texts))


@torch.no_grad()
def reconstruct(model, texts: list[str], **options) -> list[str]:
    """Decode each text from its posterior mean (or a posterior sample); options as ``reconstruct_batch``."""
    return reconstruct_batch(model, model.batch(texts), **options)


@torch.no_grad()
def reconstruct_batch(model, batch: TextBatch, strategy: str = "greedy", use_mean: bool = True,
                      seed: Optional[int] = None, max_length: Optional[int] = None, **options) -> list[str]:
    """Decode each sentence of a tokenised batch (on the model's device) from
    its posterior mean, or a posterior sample with ``use_mean=False``."""
    model.eval()
    q = model.infer(batch)
    generator = _generator(model, seed)
    z = q.mean if use_mean else q.sample(generator=generator)
    settings = _settings(model, strategy, max_length, **options)
    return model.tokenizer.decode_batch(_decode(model, z, len(batch), settings, generator))


@torch.no_grad()
def decode(model, z: Tensor, strategy: str = "greedy", seed: Optional[int] = None,
           max_length: Optional[int] = None, **options) -> list[str]:
    """Decode given latent codes z (N, D): one sentence per row."""
    model.eval()
    generator = _generator(model, seed)
    settings = _settings(model, strategy, max_length, **options)
    return model.tokenizer.decode_batch(_decode(model, z.to(model.device), len(z), settings, generator))


@torch.no_grad()
def posterior_given_prefix(model, prefix_ids: list[int], n: int, proposals: int = 512,
                           generator: Optional[torch.Generator] = None) -> Tensor:
    """n draws of z from p(z | prefix) by sampling-importance-resampling.

    Proposals come half from the prior and half from q(z | prefix) (the
    encoder read on the prefix alone); each is weighted by
    p(z) p(prefix | z) / proposal(z), where p(prefix | z) is the decoder's
    probability of the prefix tokens after bos (no eos), and n are drawn in
    proportion to the weights. An exemplar prior is searched whole instead:
    one draw from each component, as many rounds as the proposals allow (a
    stratified sample of the prior, whose components weigh the same), so
    that the few training sentences that begin with the prefix are all among
    the proposals; the proposal is then the prior itself and each weight is
    p(prefix | z) alone. Returns (n, D).
    """
    device, dim = model.device, model.latent_dim
    tok = model.tokenizer
    stratified = hasattr(model.prior, "sample_each")
    if stratified:  # each component once, as often as the proposals allow, the rest drawn at random
        rounds, rest = divmod(proposals, model.prior.components)
        z = torch.cat([model.prior.sample_each(generator, device) for _ in range(max(1, rounds))]
                      + ([model.prior.sample(rest, generator, device)] if rounds else []))  # (K, D)
    else:
        framed = torch.tensor([[tok.bos_id, *prefix_ids, tok.eos_id]], device=device)
        batch = TextBatch(framed, torch.tensor([framed.shape[1]], device=device), torch.zeros(1, dtype=torch.long))
        q = model.posterior(batch)  # (1, D)
        half = proposals // 2
        from_prior = model.prior.sample(proposals - half, generator, device)
        from_q = q.sample(half, generator=generator).squeeze(1)  # (half, D)
        z = torch.cat([from_prior, from_q])  # (K, D)
        log_prior = model.prior.log_prob(z)  # (K,)
        share = len(from_prior) / len(z)  # the proposal: a mixture of the prior and q in these shares
        log_proposal = log_prior if share == 1 else torch.logaddexp(
            log_prior + math.log(share), q.log_prob(z.unsqueeze(1)).squeeze(1) + math.log(1 - share))
    inputs = torch.tensor([[tok.bos_id, *prefix_ids[:-1]]], device=device).expand(len(z), -1)
    targets = torch.tensor([prefix_ids], device=device).expand(len(z), -1)
    log_prefix = model.sequence_log_likelihood(inputs, targets, torch.ones_like(targets, dtype=torch.bool), z)
    log_weights = log_prefix if stratified else log_prior + log_prefix - log_proposal
    chosen = torch.multinomial(log_weights.softmax(0), n, replacement=True, generator=generator)
    return z[chosen]


@torch.no_grad()
def complete(model, prefix: str, n: int = 5, strategy: Optional[str] = None, seed: Optional[int] = None,
             max_length: Optional[int] = None, proposals: int = 512, continue_word: bool = False,
             **options) -> list[str]:
    """n continuations of ``prefix`` from the model's own distribution: z from
    p(z | prefix), then the continuation decoded after the forced prefix.
    A prefix that ends in a letter or digit is taken as ending with a whole
    word (the continuation starts a new one) unless ``continue_word``.
    ``strategy`` defaults to the run's ``model.sample_strategy``."""
    model.eval()
    strategy = strategy or model.config.model.sample_strategy
    if not prefix.strip():
        raise TextVAEError("the prefix to complete is empty")
    prefix_ids = model.tokenizer.encode(prefix)
    if not prefix_ids:
        raise TextVAEError(f"{prefix!r} has no tokens")
    model.tokenizer.require_known(prefix, prefix_ids)
    if len(prefix_ids) >= length_limit(model):
        raise TextVAEError(f"the prefix has {len(prefix_ids):,} tokens; this model writes at most "
                           f"{length_limit(model):,} (data.max_length is {model.config.data.max_length})")
    generator = _generator(model, seed)
    z = posterior_given_prefix(model, prefix_ids, n, proposals, generator) if model.has_latent else None
    settings = _settings(model, strategy, max(max_length or model.config.data.max_length, len(prefix_ids) + 1),
                         **options)
    ends_word = prefix.rstrip()[-1:].isalnum() and not continue_word
    outputs = _decode(model, z, n, settings, generator, [prefix_ids] * n,
                      model.tokenizer.word_pieces if ends_word else ())
    shown_prefix = model.tokenizer.decode(prefix_ids)
    texts = []
    for ids in outputs:
        text = model.tokenizer.decode(ids)
        # Keep the user's own spelling of the prefix (e.g. words the vocabulary maps to unk).
        texts.append(prefix.strip() + text[len(shown_prefix):] if text.startswith(shown_prefix) else text)
    return texts


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation (Shoemake 1985; White 2016 for latent spaces).
    a, b: (D,), t: (S,) -> (S, D); falls back to linear for parallel vectors."""
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(omega.abs()) < 1e-6:
        return torch.lerp(a.expand(len(t), -1), b.expand(len(t), -1), t.unsqueeze(1))
    t = t.unsqueeze(1)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


@torch.no_grad()
def interpolate(model, start: str, end: str, steps: int = 7, method: str = "linear", strategy: str = "greedy",
                seed: Optional[int] = None, max_length: Optional[int] = None, **options) -> list[str]:
    """Decode ``steps`` points on the path between the posterior means of two sentences."""
    model.require_latent()
    if steps < 2:
        raise TextVAEError("interpolation needs --steps >= 2")
    if method not in ("linear", "slerp"):
        raise TextVAEError(f"unknown interpolation {method!r} (linear, slerp)")
    means = encode(model, [start, end]).mean
    t = torch.linspace(0, 1, steps, device=model.device)
    if method == "linear":
        z = torch.lerp(means[0].expand(steps, -1), means[1].expand(steps, -1), t.unsqueeze(1))
    else:
        z = slerp(means[0], means[1], t)
    settings = _settings(model, strategy, max_length, **options)
    return model.tokenizer.decode_batch(_decode(model, z, steps, settings, _generator(model, seed)))


@torch.no_grad()
def fit_prior(model, texts: list[str], components: Optional[int] = None, batch_size: int = 256,
              seed: int = 0, kind: str = "gmm") -> dict[str, float]:
    """Fit a second-stage prior (prior.py) to the posteriors of ``texts`` (the
    training sentences) and switch the model to it (``model.prior=kind``):
    ``gmm`` a Gaussian mixture of ``components`` fitted to all their means,
    ``exemplar`` the posteriors of ``components`` of them drawn at random
    (seeded). Returns the fit's figures: mean log-density of the means under
    the new prior and under N(0, I), in nats."""
    import dataclasses
    import random

    from .latent import standard_normal_log_prob
    from .prior import FITTED_PRIORS, PRIORS

    if model.latent_dim == 0:
        raise TextVAEError("this model is a language model (latent_dim=0): it has no latent space")
    if kind not in FITTED_PRIORS:
        raise TextVAEError(f"unknown prior kind {kind!r}: choose one of {', '.join(FITTED_PRIORS)}")
    texts = [t for t in texts if t.strip()]
    if len(texts) < 2:
        raise TextVAEError("fitting a prior needs at least 2 sentences")
    components = min(components or model.config.model.prior_components, len(texts))
    if kind == "exemplar":  # only the chosen sentences are encoded
        texts = random.Random(seed).sample(texts, components)
    posteriors = [encode(model, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    means = torch.cat([q.mean.float().cpu() for q in posteriors])  # (N, D)
    prior = PRIORS[kind](model.latent_dim, components)
    if kind == "exemplar":
        figures = prior.fit(means, torch.cat([q.logvar.float().cpu() for q in posteriors]))
    else:
        figures = prior.fit(means, generator=torch.Generator().manual_seed(seed))
    model.prior = prior.to(model.device)
    model.config.model = dataclasses.replace(model.config.model, prior=kind, prior_components=components)
    figures["normal_log_likelihood"] = float(standard_normal_log_prob(means).mean())
    return figures
