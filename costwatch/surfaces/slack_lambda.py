"""AWS Lambda entry point for Slack answers (``costwatch.surfaces.slack_lambda.handle``), behind a
Lambda function URL: the same Bolt app as ``costwatch serve``, through Bolt's AWS Lambda adapter.

Config and secrets load as for the hourly job (:mod:`costwatch.handler`: ``COSTWATCH_CONFIG_SSM`` and
``COSTWATCH_SECRETS_PATH``), once per container; the state is the hourly job's DynamoDB table, so a
button press and a run agree through its conditional writes.
"""

from __future__ import annotations

import os
from typing import Any

_handler: Any = None


def _build() -> Any:
    from slack_bolt.adapter.aws_lambda import SlackRequestHandler

    from costwatch.handler import load_handler_config, load_secrets, setup_logging
    from costwatch.state import open_store

    from .slack_app import build_app

    setup_logging()
    if os.environ.get("COSTWATCH_SECRETS_PATH"):
        load_secrets(os.environ["COSTWATCH_SECRETS_PATH"])
    cfg = load_handler_config()
    return SlackRequestHandler(build_app(cfg, open_store(cfg.state)))


def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _handler
    if _handler is None:
        _handler = _build()
    return dict(_handler.handle(event, context))


__all__ = ["handle"]
