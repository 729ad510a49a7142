"""costwatch: catch hijacked cloud compute and runaway spend, and tell the owner.

Public API: load data with a provider (``costwatch.providers.files.FilesProvider`` or one built from config
by ``costwatch.sources``), run :func:`detect`, and render with ``costwatch.report.render``.

The names are resolved lazily, so ``import costwatch.handler`` (a Lambda cold start) and ``costwatch --help``
do not pay for pandas until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"Alert": ".alerts", "fingerprint": ".alerts", "Config": ".config", "load_config": ".config",
            "Detection": ".detect", "detect": ".detect",
            **{n: ".errors" for n in ("ConfigError", "CostwatchError", "DataError", "NotifyError", "ProviderError")}}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'costwatch' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .alerts import Alert, fingerprint
    from .config import Config, load_config
    from .detect import Detection, detect
    from .errors import ConfigError, CostwatchError, DataError, NotifyError, ProviderError

__all__ = ["Alert", "Config", "ConfigError", "CostwatchError", "DataError", "Detection", "NotifyError",
           "ProviderError", "detect", "fingerprint", "load_config"]
__version__ = "0.1.0"
