"""Inverted dropout (Srivastava et al. 2014) with a faster mask on CPU.

``nn.Dropout`` draws its mask with ``bernoulli_``, which on CPU runs several
times slower than drawing uniforms and comparing them with p (measured in the
README's Speed section, and in the message of commit 6c3d361). The result is the same
layer: each element is kept with probability 1 - p and scaled by 1 / (1 - p)
during training, and passed through unchanged in eval mode. Other devices
use torch's own kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Dropout(nn.Dropout):
    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.p == 1.0 or self.inplace:  # CUDA's own dropout kernel is fused
            return super().forward(x)
        keep = torch.rand(x.shape, device=x.device) >= self.p  # float32 uniforms whatever x's dtype
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - self.p))
