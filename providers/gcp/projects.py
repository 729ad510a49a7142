"""Which projects the billing account pays for (Cloud Billing ``ListProjectBillingInfo``).

This is the list of projects whose CPU is read when config ``projects`` is not set: every project billed to the
account, including ones with no spend yet, since a miner likes the project nobody looks at.  A project with
billing disabled cannot run VMs, so it is skipped and noted.  Owners and names are not read here (that would
need Resource Manager): the billing export carries ``project.name`` and ``project.labels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from costwatch.errors import ProviderError

from ._api import Calls, translate

PAGE_SIZE = 100


@dataclass(frozen=True)
class ProjectBilling:
    project_id: str
    billing_enabled: bool


def list_projects(client: Any, billing_account: str, calls: Calls, retry: Any) -> list[ProjectBilling]:
    """Every project linked to ``billing_account`` (``XXXXXX-XXXXXX-XXXXXX``), following page tokens."""
    from google.cloud import billing_v1

    name = billing_account if billing_account.startswith("billingAccounts/") else f"billingAccounts/{billing_account}"
    what = f"listing the projects of billing account {name.split('/', 1)[1]}"
    out: list[ProjectBilling] = []
    try:
        pager = client.list_project_billing_info(
            request=billing_v1.ListProjectBillingInfoRequest(name=name, page_size=PAGE_SIZE), retry=retry,
            timeout=60.0)
        for page in pager.pages:
            calls.add("billing_requests")
            out += [ProjectBilling(str(p.project_id), bool(p.billing_enabled))
                    for p in page.project_billing_info if p.project_id]
    except ProviderError:
        raise
    except Exception as e:
        raise translate(e, "billing", what) from None
    return sorted(set(out), key=lambda p: p.project_id)
