"""Daily Azure spend per subscription, resource group, meter category, region (and resource), fetched
incrementally.

Two sources, one row format:

* ``consumption`` (default): Consumption usage details at subscription scope, both record kinds -- ``legacy``
  (EA and pay-as-you-go: ``cost``, ``billingCurrency``, ``meterDetails.meterCategory`` which only comes with
  ``$expand=properties/meterDetails``, ``resourceId``) and ``modern`` (Microsoft Customer Agreement:
  ``costInBillingCurrency``, ``billingCurrencyCode``, ``meterCategory``, ``instanceName``).  Rows keep the
  resource id, so an alert can name the new VM that costs money.  Paged with ``nextLink``.
* ``costmanagement``: one Cost Management query per window (ActualCost, Daily, grouped by resource group,
  meter category, location and charge type).  Fewer rows and requests, no resource ids.  Paged by POSTing the
  same body to ``nextLink``.

Why days are cached: usage details are large and Azure only revises recent days, so a day fetched once is kept
(``cache``) and re-fetched only while younger than ``restate_days``; such days are flagged ``estimated``.  Refunds
and credits arrive as negative amounts and are kept, as charge category ``Credit``.  Locations are brought to ARM
names (``USEast`` -> ``eastus``) so cost regions and VM regions compare: the new-region signal needs both.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

import pandas as pd

from costwatch.errors import ProviderError
from costwatch.model import empty_costs, normalize_costs
from costwatch.providers._daycache import DayCache, fetch_windows

from ._arm import MAX_PAGES, ROLE_COST, Azure, translate

MERGE_GAP_DAYS = 7
QUERY_GROUPING = ("ResourceGroupName", "MeterCategory", "ResourceLocation", "ChargeType")

# Meter categories -> FOCUS ServiceCategory.  Compute drives the mining join, so it is explicit; the rest is a
# best effort with keyword fallbacks and "Other" last.
SERVICE_CATEGORIES: dict[str, str] = {
    "Virtual Machines": "Compute",
    "Virtual Machines Licenses": "Compute",
    "Virtual Machine Scale Sets": "Compute",
    "Azure Kubernetes Service": "Compute",
    "Container Instances": "Compute",
    "Azure Container Apps": "Compute",
    "Azure App Service": "Compute",
    "Functions": "Compute",
    "Cloud Services": "Compute",
    "Batch": "Compute",
    "Azure Spring Apps": "Compute",
    "Azure VMware Solution": "Compute",
    "Azure Dedicated Host": "Compute",
    "Storage": "Storage",
    "Backup": "Storage",
    "Azure NetApp Files": "Storage",
    "Azure Data Lake Storage": "Storage",
    "Container Registry": "Storage",
    "Virtual Network": "Networking",
    "Bandwidth": "Networking",
    "Load Balancer": "Networking",
    "VPN Gateway": "Networking",
    "Application Gateway": "Networking",
    "Azure DNS": "Networking",
    "Content Delivery Network": "Networking",
    "Azure Front Door Service": "Networking",
    "ExpressRoute": "Networking",
    "Azure Firewall": "Networking",
    "Network Watcher": "Networking",
    "Azure Bastion": "Networking",
    "NAT Gateway": "Networking",
    "Traffic Manager": "Networking",
    "IP Addresses": "Networking",
    "SQL Database": "Databases",
    "SQL Managed Instance": "Databases",
    "Azure Cosmos DB": "Databases",
    "Azure Database for PostgreSQL": "Databases",
    "Azure Database for MySQL": "Databases",
    "Redis Cache": "Databases",
    "Azure Cache for Redis": "Databases",
    "Azure Synapse Analytics": "Analytics",
    "Azure Data Factory v2": "Analytics",
    "Azure Databricks": "Analytics",
    "HDInsight": "Analytics",
    "Event Hubs": "Analytics",
    "Stream Analytics": "Analytics",
    "Azure Data Explorer": "Analytics",
    "Cognitive Services": "AI and Machine Learning",
    "Azure OpenAI Service": "AI and Machine Learning",
    "Machine Learning": "AI and Machine Learning",
    "Azure Machine Learning": "AI and Machine Learning",
    "Azure Monitor": "Management and Governance",
    "Log Analytics": "Management and Governance",
    "Insight and Analytics": "Management and Governance",
    "Automation": "Management and Governance",
    "Microsoft Defender for Cloud": "Security",
    "Security Center": "Security",
    "Key Vault": "Security",
    "Sentinel": "Security",
    "Azure DDOS Protection": "Security",
}
_KEYWORDS: tuple[tuple[str, str], ...] = (
    (r"virtual machine|kubernetes|container|app service|functions|compute|batch|vmware", "Compute"),
    (r"storage|backup|disk|netapp|registry", "Storage"),
    (r"sql|cosmos|postgres|mysql|mariadb|redis|database", "Databases"),
    (r"openai|cognitive|machine learning|\bai\b", "AI and Machine Learning"),
    (r"network|bandwidth|gateway|dns|front door|cdn|expressroute|firewall|load balanc|traffic|ip address",
     "Networking"),
    (r"defender|security|key vault|sentinel|ddos", "Security"),
    (r"monitor|log analytics|insight|automation|policy|advisor", "Management and Governance"),
    (r"synapse|data factory|databricks|hdinsight|event hub|stream analytics|data explorer", "Analytics"),
)

# Legacy (EA) resourceLocation spellings -> ARM region names; display names ("East US") only need squeezing.
LEGACY_REGIONS: dict[str, str] = {
    "useast": "eastus", "useast2": "eastus2", "uswest": "westus", "uswest2": "westus2", "uswest3": "westus3",
    "uscentral": "centralus", "usnorthcentral": "northcentralus", "ussouthcentral": "southcentralus",
    "uswestcentral": "westcentralus", "eunorth": "northeurope", "euwest": "westeurope",
    "europenorth": "northeurope", "europewest": "westeurope", "asiaeast": "eastasia",
    "asiasoutheast": "southeastasia", "jaeast": "japaneast", "jawest": "japanwest", "aueast": "australiaeast",
    "ausoutheast": "australiasoutheast", "aucentral": "australiacentral", "caeast": "canadaeast",
    "cacentral": "canadacentral", "incentral": "centralindia", "indiacentral": "centralindia",
    "insouth": "southindia", "indiasouth": "southindia", "inwest": "westindia", "indiawest": "westindia",
    "krcentral": "koreacentral", "krsouth": "koreasouth", "frcentral": "francecentral", "frsouth": "francesouth",
    "dewestcentral": "germanywestcentral", "denorth": "germanynorth", "chnorth": "switzerlandnorth",
    "chwest": "switzerlandwest", "noeast": "norwayeast", "nowest": "norwaywest", "zanorth": "southafricanorth",
    "zawest": "southafricawest", "aecentral": "uaecentral", "aenorth": "uaenorth", "sesouth": "swedensouth",
    "secentral": "swedencentral",
}
NO_REGION = frozenset({"", "global", "unknown", "unassigned", "allregions", "intercontinental", "na", "n/a",
                       "none"})
# Azure ChargeType -> FOCUS ChargeCategory (negative amounts become Credit whatever their type)
CHARGE_CATEGORIES = {"usage": "Usage", "unusedreservation": "Usage", "unusedsavingsplan": "Usage",
                     "purchase": "Purchase", "refund": "Credit", "credit": "Credit", "tax": "Tax",
                     "roundingadjustment": "Adjustment", "adjustment": "Adjustment"}

# (day, subscription, subscription_name, resource_group, service, region, resource_id, charge, amount,
#  currency, tags)
Row = tuple[str, str, str | None, str | None, str | None, str | None, str | None, str, float, str, dict[str, str]]


def service_category(meter_category: str) -> str:
    """FOCUS ServiceCategory for an Azure meter category; "Other" when nothing matches."""
    if meter_category in SERVICE_CATEGORIES:
        return SERVICE_CATEGORIES[meter_category]
    low = meter_category.lower()
    return next((cat for pattern, cat in _KEYWORDS if re.search(pattern, low)), "Other")


def normalize_region(location: Any) -> str | None:
    """ARM region name (``eastus``) for any spelling billing data uses; None for non-regional charges."""
    if location is None:
        return None
    squeezed = re.sub(r"[\s_-]", "", str(location).lower())
    if squeezed in NO_REGION:
        return None
    return LEGACY_REGIONS.get(squeezed, squeezed)


def charge_category(charge_type: Any, amount: float) -> str:
    if amount < 0:
        return "Credit"
    return CHARGE_CATEGORIES.get(str(charge_type or "usage").replace(" ", "").lower(), "Usage")


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(Decimal(str(value)))
    except (ArithmeticError, ValueError):
        return None


def _str(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None


def _tags(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


class _Sums:
    """Rows summed per (day, resource group, meter category, region, resource, charge, currency)."""

    def __init__(self, subscription: str) -> None:
        self.subscription = subscription
        self.rows: dict[tuple[str, str | None, str | None, str | None, str | None, str, str], list[Any]] = {}

    def add(self, day: str, sub_name: str | None, rg: str | None, meter: str | None, location: Any,
            resource_id: str | None, charge_type: Any, amount: float, currency: str | None,
            tags: dict[str, str]) -> None:
        charge = charge_category(charge_type, amount)
        key = (day, rg, meter, normalize_region(location), resource_id, charge, currency or "USD")
        if key in self.rows:
            cur = self.rows[key]
            cur[0] += amount
            cur[1] = cur[1] or sub_name
            cur[2] = cur[2] or tags
        else:
            self.rows[key] = [amount, sub_name, tags]

    def out(self) -> list[Row]:
        return [(k[0], self.subscription, v[1], k[1], k[2], k[3], k[4], k[5], v[0], k[6], v[2])
                for k, v in self.rows.items()]


class Costs:
    """Usage details or Cost Management queries through the cache; thread-safe per subscription."""

    def __init__(self, azure: Azure, cache: DayCache, source: str, restate_days: int,
                 clock: Callable[[], pd.Timestamp]) -> None:
        self.azure = azure
        self.cache = cache
        self.source = source
        self.restate_days = restate_days
        self.clock = clock
        self.fetched_days = 0

    def daily(self, subscription: str, days: list[dt.date], today: dt.date | None = None) -> list[Row]:
        """Rows of one subscription for ``days``, asking Azure only for what the cache cannot answer and the days
        within ``restate_days`` of ``today`` (the clock's, or a replay's)."""
        today = today or self.clock().date()
        cached = self.cache.fetched_days(self.source, part=subscription)
        fetch = self._consumption if self.source == "consumption" else self._query
        for a, b in fetch_windows(days, cached, today, self.restate_days, merge_gap=MERGE_GAP_DAYS):
            rows = fetch(subscription, a, b)
            window = [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days)]
            self.cache.store(self.source, window, [(r[0], r) for r in rows], self.clock().isoformat(),
                             part=subscription)
            self.fetched_days += len(window)
        return [tuple(r) for r in self.cache.rows(self.source, [d.isoformat() for d in days], part=subscription)]

    # -------------------------------------------------------------------------------------- consumption

    def _consumption(self, subscription: str, start: dt.date, end: dt.date) -> list[Row]:
        from azure.mgmt.consumption.models import LegacyUsageDetail, ModernUsageDetail

        last = end - dt.timedelta(days=1)
        what = "Consumption usage details"
        sums = _Sums(subscription)
        try:
            pager: Any = self.azure.consumption().usage_details.list(
                scope=f"/subscriptions/{subscription}", expand="properties/meterDetails",
                filter=f"properties/usageStart ge '{start.isoformat()}' and properties/usageEnd le "
                       f"'{last.isoformat()}'").by_page()
            seen: set[str] = set()
            for n, page in enumerate(pager):
                if n >= MAX_PAGES:
                    raise ProviderError(f"azure: more than {MAX_PAGES} pages of usage details for subscription "
                                        f"{subscription}; narrow the window")
                for item in page:
                    if isinstance(item, LegacyUsageDetail):
                        _legacy(item, sums)
                    elif isinstance(item, ModernUsageDetail):
                        _modern(item, sums)
                token = pager.continuation_token
                if token and token in seen:
                    raise ProviderError("azure: usage details returned the same nextLink twice; stopped to avoid "
                                        "a request loop")
                if token:
                    seen.add(token)
        except Exception as e:
            raise translate(e, what, ROLE_COST, subscription) from None
        return sums.out()

    # ------------------------------------------------------------------------------------ cost management

    def query_definition(self, start: dt.date, end: dt.date) -> Any:
        """ActualCost per day and group for [start, end); built with the SDK model so the wire shape is its."""
        from azure.mgmt.costmanagement import models as cm

        definition = cm.QueryDefinition(
            type="ActualCost", timeframe="Custom",
            time_period=cm.QueryTimePeriod(
                from_property=dt.datetime.combine(start, dt.time(), dt.UTC),
                to=dt.datetime.combine(end - dt.timedelta(days=1), dt.time(23, 59, 59), dt.UTC)),
            dataset=cm.QueryDataset(
                granularity="Daily", aggregation={"totalCost": cm.QueryAggregation(name="Cost", function="Sum")},
                grouping=[cm.QueryGrouping(type="Dimension", name=g) for g in QUERY_GROUPING]))
        return definition

    def _query(self, subscription: str, start: dt.date, end: dt.date) -> list[Row]:
        from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
        from azure.core.rest import HttpRequest

        what = "Cost Management query"
        definition = self.query_definition(start, end)
        body = definition.as_dict()
        sums = _Sums(subscription)
        try:
            client = self.azure.costmanagement()
            result = client.query.usage(f"/subscriptions/{subscription}", definition)
            page: dict[str, Any] = dict(result.as_dict()) if result is not None else {}
            seen: set[str] = set()
            for _ in range(MAX_PAGES):
                props = page.get("properties") or {}
                _query_rows(props.get("columns") or [], props.get("rows") or [], sums)
                link = props.get("nextLink")
                if not link:
                    break
                if link in seen:
                    raise ProviderError("azure: Cost Management returned the same nextLink twice; stopped to "
                                        "avoid a request loop")
                seen.add(link)
                response = client.send_request(HttpRequest("POST", link, json=body))
                if response.status_code == 401:
                    raise ClientAuthenticationError(response=response)
                if response.status_code >= 400:
                    raise HttpResponseError(response=response)
                page = response.json() if response.status_code != 204 else {}
            else:
                raise ProviderError(f"azure: more than {MAX_PAGES} Cost Management pages for subscription "
                                    f"{subscription}; narrow the window")
        except Exception as e:
            raise translate(e, what, ROLE_COST, subscription) from None
        return sums.out()


def _legacy(item: Any, sums: _Sums) -> None:
    p = item.properties
    if p is None or p.date is None:
        return
    amount = _float(p.cost)
    if amount is None:
        amount = _float(p.get("costInBillingCurrency"))
    if amount is None:
        return
    meter = p.meter_details.meter_category if p.meter_details is not None else None
    meter = _str(meter) or _str(p.get("meterCategory")) or _str(p.consumed_service)
    sums.add(p.date.date().isoformat(), _str(p.subscription_name), _str(p.resource_group), meter,
             p.resource_location, _str(p.resource_id), p.charge_type, amount,
             _str(p.billing_currency) or _str(p.get("billingCurrencyCode")), _tags(item.tags or p.get("tags")))


def _modern(item: Any, sums: _Sums) -> None:
    p = item.properties
    if p is None or p.date is None:
        return
    amount = _float(p.cost_in_billing_currency)
    if amount is None:
        return
    sums.add(p.date.date().isoformat(), _str(p.subscription_name), _str(p.resource_group),
             _str(p.meter_category) or _str(p.consumed_service), p.resource_location_normalized or p.resource_location,
             _str(p.instance_name), p.charge_type, amount, _str(p.billing_currency_code),
             _tags(item.tags or p.get("tags")))


def _query_day(value: Any) -> str | None:
    """UsageDate comes as a number (20240901) or an ISO string, depending on the account type."""
    text = str(value).strip()
    if re.fullmatch(r"\d{8}(\.0)?", text):
        return f"{text[:4]}-{text[4:6]}-{text[6:8]}"
    return text[:10] if re.match(r"\d{4}-\d{2}-\d{2}", text) else None


def _query_rows(columns: list[dict[str, Any]], rows: Iterable[list[Any]], sums: _Sums) -> None:
    names = [str(c.get("name", "")) for c in columns]
    idx = {n.lower(): i for i, n in enumerate(names)}
    cost_i = next((idx[c] for c in ("cost", "pretaxcost", "totalcost") if c in idx), None)
    day_i = idx.get("usagedate")
    if cost_i is None or day_i is None:
        raise ProviderError(f"azure: Cost Management answered without a cost or date column (got {names[:8]})")

    def col(row: list[Any], *keys: str) -> Any:
        i = next((idx[k] for k in keys if k in idx), None)
        return row[i] if i is not None and i < len(row) else None

    for row in rows:
        amount, day = _float(row[cost_i]), _query_day(row[day_i])
        if amount is None or day is None:
            continue
        sums.add(day, None, _str(col(row, "resourcegroupname", "resourcegroup")), _str(col(row, "metercategory")),
                 col(row, "resourcelocation"), None, col(row, "chargetype"), amount,
                 _str(col(row, "currency", "billingcurrency")), {})


def frame(rows: list[Row], names: dict[str, str], owners: dict[str, str], today: dt.date,
          restate_days: int) -> pd.DataFrame:
    """Cached rows as costwatch's cost frame: project = subscription id, service = meter category."""
    if not rows:
        return empty_costs()
    recent = (today - dt.timedelta(days=restate_days)).isoformat()
    row_names: dict[str, str] = {}
    for r in rows:
        if r[2]:
            row_names[r[1]] = r[2]

    def tags(r: Row) -> dict[str, str]:
        t = dict(r[10])
        if r[3]:
            t["resource_group"] = r[3]
        if r[1] in owners:
            t["owner"] = owners[r[1]]
        return t

    out = pd.DataFrame({
        "period_start": pd.to_datetime([r[0] for r in rows], utc=True),
        "period_hours": 24.0,
        "provider": "azure",
        "project_id": [r[1] for r in rows],
        "project_name": [names.get(r[1]) or row_names.get(r[1]) or r[1] for r in rows],
        "service": [r[4] or "Unknown" for r in rows],
        "service_category": [service_category(r[4] or "") for r in rows],
        "region": [r[5] for r in rows],
        "charge_category": [r[7] for r in rows],
        "resource_id": [r[6] for r in rows],
        "billed_cost": [r[8] for r in rows],
        "effective_cost": [r[8] for r in rows],
        "currency": [r[9] for r in rows],
        "tags": [tags(r) for r in rows],
        "estimated": [r[0] >= recent for r in rows],
    })
    return normalize_costs(out.sort_values(["period_start", "project_id"], kind="stable"))
