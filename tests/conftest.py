"""Test-wide settings: hypothesis runs a fixed set of examples (``make test`` and CI alike), so a red build
is reproducible and a green one stays green; ``HYPOTHESIS_PROFILE=dev`` explores new examples on each run.
Also the fake-credential AWS environment every AWS test starts from."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake AWS credentials only; never a developer's real profile, endpoint or config."""
    for k in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The handler replaces the root logger's handlers (as it must on Lambda): every
    test that runs a Lambda entry point puts pytest's back after, so later tests' capture still sees logs."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quieted = {n: logging.getLogger(n).level for n in ("botocore", "boto3", "urllib3", "slack_sdk", "matplotlib")}
    yield
    for n, lvl in quieted.items():
        logging.getLogger(n).setLevel(lvl)
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)
