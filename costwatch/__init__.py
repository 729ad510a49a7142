"""costwatch: catch hijacked cloud compute and runaway spend, and tell the owner.

Public API: load data with a provider (``costwatch.providers.files.FilesProvider`` or one built from config
by ``costwatch.sources``), run :func:`detect`, and render with ``costwatch.report.render``.
"""

from __future__ import annotations

from .alerts import Alert, fingerprint
from .config import Config, load_config
from .detect import Detection, detect
from .errors import ConfigError, CostwatchError, DataError, NotifyError, ProviderError

__all__ = ["Alert", "Config", "ConfigError", "CostwatchError", "DataError", "Detection", "NotifyError",
           "ProviderError", "detect", "fingerprint", "load_config"]
__version__ = "0.1.0"
