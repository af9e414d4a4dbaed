"""textvae: sentence-level variational autoencoders (Bowman et al. 2016)."""

from .config import Config
from .errors import TextVAEError
from .model import TextVAE
from .tokenization import Tokenizer

__all__ = ["Config", "TextVAE", "TextVAEError", "Tokenizer"]
__version__ = "0.1.0"
