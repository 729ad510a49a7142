"""costwatch: catch hijacked cloud compute and runaway spend, and tell the owner.

Public API: load data with ``costwatch.providers.files``, run ``detect`` and render with ``report``.
"""

from __future__ import annotations

from .alerts import Alert, fingerprint
from .errors import ConfigError, CostwatchError, DataError, NotifyError, ProviderError

__all__ = ["Alert", "ConfigError", "CostwatchError", "DataError", "NotifyError", "ProviderError",
           "fingerprint"]
__version__ = "0.1.0"
