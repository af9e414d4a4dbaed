"""LSTM encoder and decoder (Bowman et al. 2016; He et al. 2019's PTB setup)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence

from ..config import ModelConfig
from ..errors import TextVAEError
from . import fused_scoring, native_kernels
from .dropout import Dropout


def cell_update(recurrent: Tensor, latent_gates: Tensor, word_gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """One step of the LSTM cell (Hochreiter & Schmidhuber 1997; gate order
    i, f, g, o as nn.LSTM's) for S samples of B sentences, row s * B + b:
    recurrent = h W_hh^T (S * B, 4H) in the working precision, latent_gates
    (S, B, 4H) or (1, 1, 4H), word_gates (B, 4H) and the cell c (S * B, H)
    in fp32. Returns h (S * B, H) in the working precision and c in fp32."""
    rows, width = c.shape
    gates = recurrent.float().view(-1, word_gates.shape[0], 4 * width) + latent_gates + word_gates  # (S, B, 4H)
    i, f, g, o = gates.view(rows, -1).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return (torch.sigmoid(o) * torch.tanh(c)).to(recurrent.dtype), c


# dynamic=None: the rows (samples x sentences) change with the batch and the
# IW chunk, and become symbolic after the first change; the step's sizes do
# not depend on the sentence length.
CELL = fused_scoring.CompiledKernel(cell_update, "LSTM cell", dynamic=None)


class LSTM(nn.LSTM):
    """``nn.LSTM`` with weight drop (Merity et al. 2018, "Regularizing and
    Optimizing LSTM Language Models", sec. 2): in training, DropConnect on the
    hidden-to-hidden matrices, one mask per forward pass, so every time step
    of a batch sees the same dropped recurrent weights. The fused kernel runs
    unchanged on the masked matrices; in evaluation the weights are whole."""

    def __init__(self, *args, weight_drop: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.weight_drop, self._dropping = weight_drop, False
        self.weight_dropout = Dropout(weight_drop)  # the faster CPU mask; no parameters, no state

    def forward(self, input, hx=None):  # as nn.LSTM's: (B, T, E) or packed, optional (h0, c0)
        if not (self.training and self.weight_drop > 0) or self._dropping:
            return super().forward(input, hx)
        dropped = {name: self.weight_dropout(getattr(self, name))
                   for name in self._flat_weights_names if name.startswith("weight_hh")}
        self._dropping = True  # functional_call runs forward again, on the dropped weights
        try:
            return functional_call(self, dropped, (input, hx))
        finally:
            self._dropping = False
            self._init_flat_weights()  # the fused kernel's weight list back on the parameters themselves


class LSTMEncoder(nn.Module):
    """(Bidirectional, multi-layer) LSTM over the whole sentence; the feature
    for q(z|x) is the last layer's final hidden state (both directions)."""

    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        width = config.encoder_width
        self.embedding = nn.Embedding(vocab_size, config.embed_dim, padding_idx=pad_id)
        self.dropout = Dropout(config.dropout)
        self.lstm = LSTM(config.embed_dim, width, config.encoder_layers, batch_first=True,
                         bidirectional=config.bidirectional, weight_drop=config.weight_drop,
                         dropout=config.dropout if config.encoder_layers > 1 else 0.0)
        self.output_dim = width * (2 if config.bidirectional else 1)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """tokens (B, T) framed with bos/eos, lengths (B,) -> features (B, F)."""
        embedded = self.dropout(self.embedding(tokens))  # (B, T, E)
        if not self.lstm.bidirectional:
            # A forward LSTM is causal: its output at each sentence's last real
            # token is its final state there, whatever padding follows, so no
            # packing is needed (packing costs more than it saves once batches
            # are bucketed by length).
            outputs, _ = self.lstm(embedded)  # (B, T, H)
            last = (lengths - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[-1])
            return outputs.gather(1, last).squeeze(1)  # (B, H)
        # The backward direction starts at the end: pack so it starts at each
        # sentence's real end and padding never reaches the features.
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (hidden, _) = self.lstm(packed)  # hidden: (layers * 2, B, H)
        return torch.cat([hidden[-2], hidden[-1]], dim=-1)  # (B, 2H)


class LSTMDecoder(nn.Module):
    """Autoregressive LSTM language model conditioned on z.

    ``latent_to_decoder`` picks how z enters: ``init`` sets the initial cell
    state c0 = W z and h0 = tanh(c0); ``input`` concatenates z to every input
    embedding (He et al. 2019); ``both`` does both. Without a latent
    (``latent_dim=0``) it is a plain LSTM language model.

    The recurrent state is the generation cache: each new token costs one step.
    """

    def __init__(self, config: ModelConfig, vocab_size: int, pad_id: int) -> None:
        super().__init__()
        latent = config.latent_dim
        self.latent_in_input = latent > 0 and config.latent_to_decoder in ("input", "both")
        self.latent_in_state = latent > 0 and config.latent_to_decoder in ("init", "both")
        self.layers, self.hidden_dim = config.decoder_layers, config.hidden_dim
        self.embedding = nn.Embedding(vocab_size, config.embed_dim, padding_idx=pad_id)
        self.dropout = Dropout(config.dropout)
        input_dim = config.embed_dim + (latent if self.latent_in_input else 0)
        self.lstm = LSTM(input_dim, config.hidden_dim, config.decoder_layers, batch_first=True,
                         weight_drop=config.weight_drop,
                         dropout=config.dropout if config.decoder_layers > 1 else 0.0)
        if self.latent_in_state:
            self.latent_to_cell = nn.Linear(latent, config.decoder_layers * config.hidden_dim)
        self.output = nn.Linear(config.hidden_dim, vocab_size)
        if config.tie_embeddings:
            if config.embed_dim != config.hidden_dim:
                raise TextVAEError("model.tie_embeddings needs model.embed_dim == model.hidden_dim")
            self.output.weight = self.embedding.weight

    def initial_state(self, z: Optional[Tensor], batch_size: int) -> dict[str, Tensor]:
        """The state before bos: the LSTM's (h, c), each (layers, B, H), and z."""
        weight = self.output.weight
        if self.latent_in_state and z is not None:
            cell = self.latent_to_cell(z).view(-1, self.layers, self.hidden_dim).transpose(0, 1).contiguous()
            hidden = torch.tanh(cell)
        else:
            cell = weight.new_zeros(self.layers, batch_size, self.hidden_dim)
            hidden = torch.zeros_like(cell)
        state = {"h": hidden, "c": cell}
        if self.latent_in_input and z is not None:
            state["z"] = z
        return state

    def forward(self, inputs: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """inputs (B, T) -> hidden states (B, T, H) and the state after them.

        Causal by construction: position t sees only inputs up to t, so padding
        after a sentence never changes its outputs.
        """
        embedded = self.dropout(self.embedding(inputs))  # (B, T, E)
        if "z" in state:
            z = state["z"].to(embedded.dtype)
            embedded = torch.cat([embedded, z.unsqueeze(1).expand(-1, inputs.shape[1], -1)], dim=-1)
        hidden, (h, c) = self.lstm(embedded, (state["h"].to(embedded.dtype), state["c"].to(embedded.dtype)))
        new_state = dict(state, h=h, c=c)
        return self.dropout(hidden), new_state  # (B, T, H)

    def states_under_samples(self, inputs: Tensor, z: Tensor) -> Optional[Tensor]:
        """The hidden states (S * B, T, H) of the sentences ``inputs`` (B, T)
        under each of S latent samples ``z`` (S, B, D), row s * B + b for
        sentence b and sample s, as ``forward`` gives them in evaluation: for
        importance-weighted scoring, where every sentence is decoded under
        hundreds of samples. The input gates' share of the words, W_e e(x_t) +
        b, is the same under every sample, so it is computed once a sentence,
        and z's share, W_z z, once a sample; only the recurrence runs S * B
        rows (in bf16 on a CPU with AVX-512 BF16, as one native kernel a
        step: native_kernels.py). None where this does not apply (training, autograd, several
        layers, no latent): the caller decodes the repeated batch instead."""
        if self.training or torch.is_grad_enabled() or self.layers != 1 or z is None or inputs.device.type != "cpu":
            return None  # (on a GPU the fused cuDNN LSTM over the repeated batch stays)
        samples, batch, _ = z.shape
        rows, steps, width = samples * batch, inputs.shape[1], self.hidden_dim
        device = inputs.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
        lstm, words = self.lstm, self.embedding.embedding_dim
        # The input gates in fp32 from inputs and weights rounded to ``dtype``,
        # as the fused LSTM sums them (once a sentence or a sample: cheap).
        weight_ih = lstm.weight_ih_l0.to(dtype).float()  # (4H, E [+ D])
        with torch.autocast(device, enabled=False):
            # time-major, so each step's slice is one contiguous (B, 4H) block, whatever B and T
            word_gates = F.linear(self.embedding(inputs.t()).to(dtype).float(), weight_ih[:, :words],
                                  lstm.bias_ih_l0.to(dtype).float() + lstm.bias_hh_l0.to(dtype).float())  # (T, B, 4H)
        state = self.initial_state(z.reshape(rows, -1), rows)
        h, c = state["h"][0].to(dtype), state["c"][0].float()  # (S * B, H)
        hidden = torch.empty(rows, steps, width, dtype=dtype, device=inputs.device)
        latent = z if self.latent_in_input else None
        if native_kernels.lstm_recurrence(lstm, words, h, c, word_gates, latent, hidden):  # bf16, AVX-512 BF16
            return hidden
        with torch.autocast(device, enabled=False):
            latent_gates = (F.linear(z.to(dtype).float(), weight_ih[:, words:]) if self.latent_in_input
                            else word_gates.new_zeros(1, 1, 4 * width))  # (S, B, 4H)
        weight_hh = lstm.weight_hh_l0.to(dtype).t()  # (H, 4H)
        compiled = CELL if fused_scoring.active() else None  # one fused kernel a step (fused_scoring.py)
        for t in range(steps):
            recurrent = h @ weight_hh  # (S * B, 4H)
            out = compiled(recurrent, latent_gates, word_gates[t], c) if compiled is not None else None
            h, c = out if out is not None else cell_update(recurrent, latent_gates, word_gates[t], c)
            hidden[:, t] = h
        return hidden

    @staticmethod
    def select_state(state: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        """Reorder the batch of a state (beam search): index (B',) -> B' rows."""
        return {k: v.index_select(1 if k in ("h", "c") else 0, index) for k, v in state.items()}
