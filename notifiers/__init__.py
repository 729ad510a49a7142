"""Notifiers: one module per service behind ``notify(notifications) -> deliveries`` (``costwatch.notify``).

Installed as ``costwatch.notifiers``.  Each module exposes ``from_config(section, cfg) -> Notifier`` and is
imported only when configured, so a user without Slack never imports slack-sdk.
"""

from __future__ import annotations

import importlib
from typing import Any

from costwatch.errors import ConfigError
from costwatch.notify import Notifier

# notify.<key> -> "module:factory"
REGISTRY: dict[str, str] = {
    "slack": "costwatch.notifiers.slack:from_config",
    "email": "costwatch.notifiers.email:from_config",
    "stdout": "costwatch.notifiers.stdout:from_config",
    "teams": "costwatch.notifiers.teams:from_config",
    "pagerduty": "costwatch.notifiers.pagerduty:from_config",
    "webhook": "costwatch.notifiers.webhook:from_config",
    "sns": "costwatch.notifiers.sns:from_config",
}

# teams, pagerduty and webhook need only the standard library
EXTRAS = {"slack": "slack", "email": "aws", "sns": "aws"}


def build(name: str, section: Any, cfg: Any) -> Notifier:
    """The notifier for ``notify.<name>``; a missing optional dependency says which extra to install."""
    target = REGISTRY.get(name)
    if target is None:
        raise ConfigError(f"notify: unknown notifier {name!r}; known: {', '.join(sorted(REGISTRY))}")
    module, _, attr = target.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ConfigError(f"notify.{name} needs an extra: pip install 'costwatch[{EXTRAS.get(name, name)}]' "
                          f"({e.name} is missing)") from e
    notifier: Notifier = factory(section, cfg)
    return notifier


__all__ = ["REGISTRY", "build"]
