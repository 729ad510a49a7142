"""Surfaces: where people reach costwatch other than its messages — the Slack app that takes owners'
answers (``slack_app``), served over HTTP (``serve``) or from Lambda (``slack_lambda``).

Surfaces sit on top of the core (answers, state, config) and the notifiers' Block Kit; nothing in the core
imports them.  Each module imports its optional dependency (``slack-bolt``, ``uvicorn``) itself, so the
core and the hourly job run without them.
"""
