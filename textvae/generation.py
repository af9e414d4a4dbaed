"""One batched generation engine for every decoder.

A decoder offers ``initial_state(z, B)``, ``forward(inputs, state) ->
(hidden, state)``, ``output`` (hidden -> logits) and ``select_state(state,
index)``. The state is the cache (LSTM (h, c); Transformer keys and values),
so each new token costs one decoder step over one position, and a sentence
that has ended leaves the batch (``select_state`` keeps the live rows), so
the work follows the sentences' own lengths, not the longest one's.

Strategies: greedy, sampling (temperature, top-k, top-p) and beam search
(width, length normalisation). Greedy decoding on a CPU with native bf16
finds each token from a bf16 output product and checks it in fp32
(nn/output.py, ScreenedArgmax): the same tokens at a fraction of the cost.
Optional per-row prefixes are forced before the model continues (prefix
completion). Any strategy can be held to the
words of a list (``GenerationConfig.words``, textvae/lexicon.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import Tensor, nn

from .nn.output import ScreenedArgmax

if TYPE_CHECKING:
    from .lexicon import WordConstraint


@dataclass
class GenerationConfig:
    strategy: str = "greedy"  # greedy, sample or beam
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # nucleus sampling (Holtzman et al. 2020); 1: off
    beam_size: int = 4
    length_penalty: float = 1.0  # beam score = log p / length ** length_penalty
    max_length: int = 50  # tokens per output sentence, prefix included, eos excluded
    words: Optional["WordConstraint"] = None  # spell only these words (textvae/lexicon.py); None: any

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "sample", "beam"):
            raise ValueError(f"unknown strategy {self.strategy!r} (greedy, sample, beam)")
        if not self.temperature > 0 or self.temperature == float("inf") or self.top_k < 0 \
                or not 0 < self.top_p <= 1 or self.beam_size < 1 or self.max_length < 1 \
                or not abs(self.length_penalty) < float("inf"):
            raise ValueError("invalid generation settings: a finite temperature > 0, top_k >= 0, 0 < top_p <= 1, "
                             "beam_size >= 1, max_length >= 1 and a finite length_penalty are required")


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the smallest set
    whose probability reaches top_p. logits (N, V) -> (N, V)."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits: Tensor, config: GenerationConfig, generator: Optional[torch.Generator],
           rows: Optional[Tensor] = None, batch_size: int = 0) -> Tensor:
    """Next token per row, logits (R, V) -> (R,).

    Sampling is torch.multinomial's own method made explicit: argmax of p / q
    with q ~ Exp(1) drawn for every cell (the exponential form of the Gumbel-max
    trick). The noise is drawn for the whole batch of ``batch_size`` rows and
    ``rows`` picks the live ones, so a batch whose finished rows have left
    consumes the random stream exactly as the full batch does: the same seed
    gives the same sentences.
    """
    if config.strategy == "greedy":
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / config.temperature, config.top_k, config.top_p).softmax(-1)
    noise = probs.new_empty(max(batch_size, len(probs)), probs.shape[-1]).exponential_(1, generator=generator)
    return (probs / (noise if rows is None else noise[rows])).argmax(-1)


def _next_logits(decoder: nn.Module, hidden: Tensor, forbidden: tuple[int, ...],
                 screen: Optional[ScreenedArgmax] = None) -> Tensor:
    """fp32 logits (B, V) for the last position, with forbidden ids at -inf
    (with ``screen``, its bf16 approximation, for its exact argmax)."""
    logits = decoder.output(hidden[:, -1]).float() if screen is None else screen.logits(hidden[:, -1])
    if forbidden:
        logits[:, list(forbidden)] = float("-inf")
    return logits


def _mask_first(logits: Tensor, prefix_len: Tensor, position: int, ids: tuple[int, ...]) -> Tensor:
    """logits (R, V) with ``ids`` at -inf in the rows whose prefix (R,) is
    non-empty and ends just before ``position``."""
    if not ids:  # the usual case: no work in the decoding loop
        return logits
    rows = (prefix_len == position) & (prefix_len > 0)
    if not bool(rows.any()):
        return logits
    masked = logits.clone()
    masked[rows.nonzero(), torch.tensor(ids, device=logits.device)] = float("-inf")  # (k, 1) x (m,) cells
    return masked


def _prefix_tensor(prefixes: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Padded prefixes (B, L) and their lengths (B,)."""
    width = max(1, max(len(p) for p in prefixes))
    table = torch.zeros(len(prefixes), width, dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        table[row, : len(prefix)] = torch.tensor(prefix, dtype=torch.long)
    return table.to(device), torch.tensor([len(p) for p in prefixes], device=device)


@torch.no_grad()
def generate(decoder: nn.Module, z: Optional[Tensor], batch_size: int, bos_id: int, eos_id: int,
             config: GenerationConfig, prefixes: Optional[list[list[int]]] = None,
             generator: Optional[torch.Generator] = None, forbidden: tuple[int, ...] = (),
             not_first: tuple[int, ...] = ()) -> list[list[int]]:
    """Token ids of each row's sentence (prefix included; no bos, no eos).

    z: (B, D) or None for a language model. ``forbidden`` ids (padding, a bos
    distinct from eos) are never chosen; ``not_first`` ids are not chosen
    right after a non-empty prefix (a completion that starts a new word).
    """
    prefixes = prefixes or [[] for _ in range(batch_size)]
    if config.strategy == "beam":
        return beam_search(decoder, z, batch_size, bos_id, eos_id, config, prefixes, forbidden, not_first)
    device = decoder.output.weight.device
    table, prefix_len = _prefix_tensor(prefixes, device)
    common = min(len(p) for p in prefixes)
    # Greedy decoding reads its argmax off a bf16 product where that is faster (nn/output.py).
    screen = ScreenedArgmax.for_decoder(decoder) if config.strategy == "greedy" else None
    state = decoder.initial_state(z, batch_size)
    start = torch.cat([torch.full((batch_size, 1), bos_id, device=device), table[:, :common]], dim=1)
    hidden, state = decoder(start, state)  # the shared prefix in one call
    logits = _next_logits(decoder, hidden, forbidden, screen)  # (R, V) for the R live rows
    words = config.words.to(device) if config.words is not None else None
    spelt = None if words is None else words.initial(batch_size)  # (R,) each live row's word state
    for position in range(common if words is not None else 0):
        spelt = words.advance(spelt, table[:, position])
    whole = prefix_len.clone()  # (B,) tokens up to the last whole word: where max_length cuts a sentence
    out = torch.full((batch_size, max(config.max_length, common)), eos_id, dtype=torch.long, device=device)
    out[:, :common] = table[:, :common]
    live = torch.arange(batch_size, device=device)  # (R,) each live row's row in the batch
    for position in range(common, config.max_length):
        live_prefix = prefix_len[live]
        logits = _mask_first(logits, live_prefix, position, not_first)
        if words is not None:
            logits = words.mask(logits, spelt, config.max_length - position - 1)  # a last word that fits
        token = screen.argmax(logits) if screen else choose(logits, config, generator, live, batch_size)  # (R,)
        forced = live_prefix > position
        if bool(forced.any()):
            token = torch.where(forced, table[live, min(position, table.shape[1] - 1)], token)
        out[live, position] = token
        ended = (token == eos_id) & ~forced
        if bool(ended.any()):
            # A finished sentence leaves the batch: later steps decode only
            # the live rows (its cells keep eos).
            keep = (~ended).nonzero().squeeze(1)
            if len(keep) == 0:
                live = keep
                break
            live, token = live[keep], token[keep]
            state = decoder.select_state(state, keep)
            spelt = None if words is None else spelt[keep]
        if words is not None:
            spelt = words.advance(spelt, token)
            boundary = words.at_boundary(spelt)
            whole[live[boundary]] = torch.clamp_min(prefix_len[live[boundary]], position + 1)
        hidden, state = decoder(token.unsqueeze(1), state)
        logits = _next_logits(decoder, hidden, forbidden, screen)
    if words is not None and len(live):  # cut at max_length: drop a half-spelt last word (a forced prefix's)
        for row, length in zip(live.tolist(), whole[live].tolist()):
            out[row, length:] = eos_id
    return [_until_eos(row, eos_id, len(prefixes[i])) for i, row in enumerate(out.tolist())]


def _until_eos(tokens: list[int], eos_id: int, keep: int) -> list[int]:
    """Cut at the first eos after the forced prefix."""
    for position in range(keep, len(tokens)):
        if tokens[position] == eos_id:
            return tokens[:position]
    return tokens


@torch.no_grad()
def beam_search(decoder: nn.Module, z: Optional[Tensor], batch_size: int, bos_id: int, eos_id: int,
                config: GenerationConfig, prefixes: list[list[int]], forbidden: tuple[int, ...] = (),
                not_first: tuple[int, ...] = ()) -> list[list[int]]:
    """Beam search of width W over B rows at once (B * W decoder rows).

    A hypothesis ends when it emits eos among the W best candidates; its score
    is its log-probability divided by length ** length_penalty. A row stops
    when it holds W ended hypotheses. Width 1 is greedy decoding.
    """
    width, device = config.beam_size, decoder.output.weight.device
    table, prefix_len = _prefix_tensor(prefixes, device)
    rows = torch.arange(batch_size, device=device).repeat_interleave(width)  # (B*W,)
    state = decoder.initial_state(None if z is None else z[rows], batch_size * width)
    hidden, state = decoder(torch.full((batch_size * width, 1), bos_id, device=device), state)
    logits = _next_logits(decoder, hidden, forbidden)
    scores = torch.full((batch_size, width), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at the start, so beams do not duplicate
    history = torch.zeros(batch_size, width, 0, dtype=torch.long, device=device)
    ended: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch_size)]
    done = [False] * batch_size
    vocab = logits.shape[-1]
    words = config.words.to(device) if config.words is not None else None
    spelt = None if words is None else words.initial(batch_size * width)  # (B*W,) word state per hypothesis
    whole = torch.zeros(batch_size, width, dtype=torch.long, device=device)  # tokens up to the last whole word
    for position in range(config.max_length + 1):
        logits = _mask_first(logits, prefix_len[rows], position, not_first)
        if words is not None and position < config.max_length:  # a forced token or the final eos stands
            held = words.mask(logits, spelt, config.max_length - position - 1)  # a last word that fits
            logits = torch.where((prefix_len[rows] > position).unsqueeze(1), logits, held)
        log_probs = logits.log_softmax(-1).view(batch_size, width, vocab)
        forced = (prefix_len > position).view(batch_size, 1, 1)
        if bool(forced.any()):
            target = table[:, min(position, table.shape[1] - 1)].view(batch_size, 1, 1).expand(-1, width, 1)
            only = torch.full_like(log_probs, float("-inf")).scatter(-1, target, log_probs.gather(-1, target))
            log_probs = torch.where(forced, only, log_probs)
        if position == config.max_length:  # out of room: only eos may follow
            keep_eos = torch.full_like(log_probs, float("-inf"))
            keep_eos[..., eos_id] = log_probs[..., eos_id]
            log_probs = keep_eos
        candidates = (scores.unsqueeze(-1) + log_probs).view(batch_size, -1)  # (B, W*V)
        top_scores, top_index = candidates.topk(2 * width, dim=-1)
        beam_of, token_of = top_index // vocab, top_index % vocab
        next_scores = torch.full_like(scores, float("-inf"))
        next_beam = torch.zeros_like(scores, dtype=torch.long)
        next_token = torch.full_like(next_beam, eos_id)
        for b in range(batch_size):
            if done[b]:
                continue
            filled = 0
            for rank in range(2 * width):
                score = float(top_scores[b, rank])
                if score == float("-inf"):
                    break
                beam, token = int(beam_of[b, rank]), int(token_of[b, rank])
                if token == eos_id and position >= int(prefix_len[b]):
                    if rank < width:
                        tokens = history[b, beam].tolist()
                        if words is not None and position == config.max_length:  # drop a half-spelt word
                            tokens = tokens[: max(int(whole[b, beam]), int(prefix_len[b]))]
                        ended[b].append((score / (len(tokens) + 1) ** config.length_penalty, tokens))
                    continue
                next_scores[b, filled], next_beam[b, filled], next_token[b, filled] = score, beam, token
                filled += 1
                if filled == width:
                    break
            done[b] = len(ended[b]) >= width or filled == 0
        if all(done):
            break
        history = torch.cat([history.gather(1, next_beam.unsqueeze(-1).expand(-1, -1, history.shape[2])),
                             next_token.unsqueeze(-1)], dim=-1)
        scores = next_scores
        flat_beams = (torch.arange(batch_size, device=device).unsqueeze(1) * width + next_beam).view(-1)
        state = decoder.select_state(state, flat_beams)
        if words is not None:
            spelt = words.advance(spelt[flat_beams], next_token.view(-1))
            whole = torch.where(words.at_boundary(spelt).view(batch_size, width), history.shape[2],
                                whole.gather(1, next_beam))
        hidden, state = decoder(next_token.view(-1, 1), state)
        logits = _next_logits(decoder, hidden, forbidden)
    return [max(hyps, key=lambda h: h[0])[1] if hyps else [] for hyps in ended]
