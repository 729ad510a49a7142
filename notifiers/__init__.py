"""Notifiers: one module per service behind ``notify(alerts) -> result`` (Slack, email, stdout).

Installed as ``costwatch.notifiers``; the services arrive with the alert-delivery work.
"""
