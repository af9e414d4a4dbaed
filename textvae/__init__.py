"""textvae: sentence-level variational autoencoders (Bowman et al. 2016).

The names below load on first use, so that ``textvae`` (the command) starts
without importing torch before it can handle Ctrl-C.
"""

import importlib

__all__ = ["Config", "TextVAE", "TextVAEError", "Tokenizer"]
__version__ = "0.1.0"
_MODULES = {"Config": ".config", "TextVAE": ".model", "TextVAEError": ".errors", "Tokenizer": ".tokenization"}


def __getattr__(name: str):
    if name in _MODULES:
        return getattr(importlib.import_module(_MODULES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
