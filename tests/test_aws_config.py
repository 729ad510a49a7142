"""``type: aws`` in the config file: defaults, validation, documentation, and building the provider."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from costwatch.config import AwsProviderConfig, load_config, parse_config
from costwatch.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "costwatch.example.yaml"


def test_defaults() -> None:
    cfg = parse_config("providers:\n  - type: aws\n")
    p = cfg.providers[0]
    assert isinstance(p, AwsProviderConfig)
    assert (p.name, p.metric, p.restate_days, p.cache_path, p.regions) == ("aws", "UnblendedCost", 3, None, None)
    assert (p.owner_tag, p.cpu, p.max_workers, p.profile) == ("owner", True, 8, None)


def test_example_documents_every_aws_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    for name in AwsProviderConfig.model_fields:
        assert re.search(rf"^\s*#?\s*(- )?{name}:", text, re.MULTILINE), f"AwsProviderConfig.{name} undocumented"
    assert re.search(r"^\s*#\s*- type: aws", text, re.MULTILINE)


def test_example_aws_block_is_valid_when_uncommented(tmp_path: Path) -> None:
    """The commented example parses once its ``#`` are removed, so it cannot rot."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# - type: aws")
    block = []
    for line in lines[start:]:
        if not line.startswith("  #"):
            break
        body = line[3:]
        if body.startswith("   #") or body.startswith(" #"):  # an explanation, not a key
            continue
        block.append("  " + body.removeprefix(" "))
    cfg = parse_config("providers:\n" + "\n".join(block) + "\n")
    p = cfg.providers[0]
    assert isinstance(p, AwsProviderConfig) and p.regions == ["us-east-1", "eu-west-1"]


def test_unknown_key_and_bad_metric_are_located() -> None:
    unknown = r"line 3: providers\[0\]\.restate_day: unknown key \(did you mean 'restate_days'"
    with pytest.raises(ConfigError, match=unknown):
        parse_config("providers:\n  - type: aws\n    restate_day: 2\n")
    with pytest.raises(ConfigError, match=r"providers\[0\]\.metric"):
        parse_config("providers:\n  - type: aws\n    metric: BlendedCost\n")


def test_unknown_type_lists_aws() -> None:
    with pytest.raises(ConfigError, match="expected one of: 'files', 'aws', 'gcp', 'azure'"):
        parse_config("providers:\n  - type: oci\n")


def test_cache_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    f = tmp_path / "conf" / "costwatch.yaml"
    f.write_text("providers:\n  - type: aws\n    cache_path: cache/aws.db\n", encoding="utf-8")
    p = load_config(f).providers[0]
    assert isinstance(p, AwsProviderConfig)
    assert p.cache_path == str(tmp_path / "conf" / "cache" / "aws.db")


def test_build_puts_the_cache_next_to_the_state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("boto3")
    from costwatch import sources
    from costwatch.providers.aws import AwsProvider

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    f = tmp_path / "costwatch.yaml"
    f.write_text("providers:\n  - type: aws\n    name: org-a\n    metric: AmortizedCost\n"
                 "state:\n  path: st/state.db\n", encoding="utf-8")
    cfg = load_config(f)
    p = sources.build(cfg.providers[0], cfg)
    assert isinstance(p, AwsProvider) and p.name == "org-a" and p.ce.metric == "AmortizedCost"
    assert p.cache.path == tmp_path / "st" / "aws-cache.db" and p.cache.path.exists()
