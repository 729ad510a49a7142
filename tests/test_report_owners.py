"""``report``'s ``projects[].owner`` is the owner ``run`` routes the project's alerts to: the config's owner,
else the owner found in cost tags (``alerting.owner_tags``: the files path's FOCUS ``Tags``, the AWS account's
Organizations tag, the GCP project label), else ``alerting.default_owner``.  Through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from costwatch.cli import cli
from costwatch.config import parse_config
from costwatch.routing import owners_for, project_owners_from_tags

AS_OF = "2024-06-29T06:00:00Z"
DAYS = pd.date_range("2024-05-20", "2024-06-28", freq="D")
FOCUS_HEADER = ("ChargePeriodStart,ChargePeriodEnd,BilledCost,EffectiveCost,BillingCurrency,ProviderName,SubAccountId,"
                "SubAccountName,ServiceCategory,ServiceName,Tags")


def report_json(config: dict[str, Any], tmp_path: Path, *extra: str) -> dict[str, Any]:
    path = tmp_path / "costwatch.yaml"
    path.write_text(yaml.safe_dump(config))
    res = CliRunner().invoke(cli, ["report", "--config", str(path), "--as-of", AS_OF, "--format", "json", *extra],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return dict(json.loads(res.stdout))


def owners(doc: dict[str, Any]) -> dict[str, Any]:
    return {p["project"]: p["owner"] for p in doc["projects"]}


def focus_rows(project: str, tags: dict[str, str]) -> list[str]:
    tag_text = json.dumps(tags).replace('"', '""')
    return [f'{d:%Y-%m-%d} 00:00:00,{d + pd.Timedelta(days=1):%Y-%m-%d} 00:00:00,40,40,USD,Google Cloud,{project},'
            f'{project},Compute,Compute Engine,"{tag_text}"' for d in DAYS]


def test_files_report_shows_the_owner_run_routes_to(tmp_path: Path) -> None:
    """Config owner beats tags; the first of ``owner_tags`` present wins; untagged projects get the default."""
    costs = tmp_path / "costs.csv"
    costs.write_text("\n".join([FOCUS_HEADER, *focus_rows("p-config", {"team": "from-tag"}),
                                *focus_rows("p-team", {"team": "ml-platform", "env": "prod"}),
                                *focus_rows("p-owner", {"owner": "#payments-oncall", "team": "payments"}),
                                *focus_rows("p-none", {"env": "dev"})]) + "\n")
    config = {"providers": [{"type": "files", "costs": str(costs)}],
              "projects": {"p-config": {"owner": "team-config"}},
              "alerting": {"owner_tags": ["owner", "team"], "default_owner": "finops"},
              "state": {"path": str(tmp_path / "state.db")}}
    doc = report_json(config, tmp_path)
    assert owners(doc) == {"p-config": "team-config", "p-team": "ml-platform", "p-owner": "#payments-oncall",
                           "p-none": "finops"}

    # the very owners run's routing picks for these projects
    from costwatch.providers.files import load_focus

    cfg = parse_config(yaml.safe_dump(config))
    tag_owners = project_owners_from_tags(load_focus(costs), cfg.alerting.owner_tags)
    assert {p: owners_for(p, "high", cfg, tag_owners)[0] for p in owners(doc)} == owners(doc)

    # without a default owner an untagged project has none (null in JSON, not an empty string)
    config["alerting"] = {"owner_tags": ["team"]}
    doc = report_json(config, tmp_path)
    assert owners(doc) == {"p-config": "team-config", "p-team": "ml-platform", "p-owner": "payments",
                           "p-none": None}


def test_aws_report_shows_the_organizations_owner_tag(aws_env: None, tmp_path: Path) -> None:
    """Account owners come from the Organizations tag (moto), as the routing of ``run`` reads them."""
    pytest.importorskip("moto")
    from moto import mock_aws
    from test_aws_provider import EC2_SVC, ce_result, make_org, queue_ce

    with mock_aws():
        ids = make_org({"payments": "team-payments", "sandbox": "ml-platform"})
        days = [f"{d:%Y-%m-%d}" for d in DAYS]
        spend = {ids["payments"]: {EC2_SVC: 40.0}, ids["sandbox"]: {EC2_SVC: 10.0}}
        queue_ce([ce_result(days, spend, "SERVICE"),
                  ce_result(days, {a: {"us-east-1": sum(v.values())} for a, v in spend.items()}, "REGION")])
        config = {"providers": [{"type": "aws", "regions": ["us-east-1"], "cpu": False, "guardduty": False}],
                  "state": {"path": str(tmp_path / "state.db")}}
        doc = report_json(config, tmp_path)
    assert owners(doc) == {ids["payments"]: "team-payments", ids["sandbox"]: "ml-platform"}
    assert {p["project_name"] for p in doc["projects"]} == {"payments", "sandbox"}
