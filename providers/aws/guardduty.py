"""GuardDuty crypto-mining findings: evidence for costwatch's mining alerts, read from every enabled region.

GuardDuty is regional: each (account, region) has at most one detector, found with ListDetectors.  A region
without a detector (GuardDuty not enabled there) has nothing to report and is skipped quietly.  Findings
are listed by ``updatedAt`` within the window (ListFindings, 50 ids a page) and read with GetFindings
(50 ids a request).  The finding type is filtered here rather than by the API: ListFindings criteria match
types exactly only (``Matches`` is for saved filters), and a new ``CryptoCurrency:*`` variant must not be
missed because it is not on a list.

Findings are optional evidence: GuardDuty access denied becomes a note (naming the IAM action to grant),
never a failure of the cost or usage fetch.  Other regional failures are reported like EC2's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from costwatch.errors import ProviderError
from costwatch.model import FINDING_COLUMNS, empty_findings

from ._api import DENIED_CODES, Api, AwsCallError
from .cache import Cache
from .compute import CLUSTER_TAGS

CRYPTO_PREFIXES = ("CryptoCurrency:", "Impact:Runtime/CryptoMinerExecuted")
PAGE_SIZE = 50  # ListFindings MaxResults and GetFindings FindingIds limits
MAX_PAGES = 1000
# detector ids per (account, region) are kept this long: an hourly run then asks ListDetectors in one run of
# six, a quarter fewer GuardDuty requests across an organization (a detector enabled meanwhile waits as long)
DETECTORS_TTL = pd.Timedelta(hours=6)


@dataclass
class RegionFindings:
    region: str
    account: str | None = None
    findings: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    denied: AwsCallError | None = None  # access denied: a note, not an error
    skipped: bool = False  # not started before the deadline


def is_crypto(finding_type: str) -> bool:
    return finding_type.startswith(CRYPTO_PREFIXES)


def _ms(ts: pd.Timestamp) -> int:
    t = pd.Timestamp(ts)
    t = t.tz_convert("UTC") if t.tzinfo else t.tz_localize("UTC")
    return int(t.value // 1_000_000)


def _utc(value: Any) -> pd.Timestamp | None:
    if value in (None, ""):
        return None
    try:
        return pd.Timestamp(pd.to_datetime(value, utc=True))
    except (ValueError, TypeError):
        return None


def _batches(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i: i + n]


def detector_ids(api: Api, region: str) -> list[str]:
    client = api.client("guardduty", region)
    out: list[str] = []
    params: dict[str, Any] = {}
    seen: set[str] = set()
    while True:
        page = api.call(client, "ListDetectors", region=region, **params)
        out += [str(d) for d in page.get("DetectorIds", [])]
        token = page.get("NextToken")
        if not token or token in seen:
            return out
        seen.add(token)
        params["NextToken"] = token


def finding_ids(api: Api, region: str, detector: str, start: pd.Timestamp, end: pd.Timestamp) -> list[str]:
    """Ids of the findings updated in [start, end] (all types: see the module docstring)."""
    client = api.client("guardduty", region)
    params: dict[str, Any] = {
        "DetectorId": detector, "MaxResults": PAGE_SIZE,
        "FindingCriteria": {"Criterion": {"updatedAt": {"GreaterThanOrEqual": _ms(start),
                                                        "LessThanOrEqual": _ms(end)}}},
    }
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(MAX_PAGES):
        page = api.call(client, "ListFindings", region=region, **params)
        out += [str(i) for i in page.get("FindingIds", [])]
        token = page.get("NextToken")
        if not token:
            return list(dict.fromkeys(out))
        if token in seen:
            raise ProviderError(f"aws: GuardDuty returned the same NextToken twice in {region}; "
                                "stopped to avoid a request loop")
        seen.add(token)
        params["NextToken"] = token
    raise ProviderError(f"aws: GuardDuty listed more than {MAX_PAGES * PAGE_SIZE} findings in {region}; "
                        "narrow the window")


def get_findings(api: Api, region: str, detector: str, ids: list[str]) -> list[dict[str, Any]]:
    client = api.client("guardduty", region)
    out: list[dict[str, Any]] = []
    for batch in _batches(ids, PAGE_SIZE):
        page = api.call(client, "GetFindings", region=region, DetectorId=detector, FindingIds=batch)
        out += list(page.get("Findings", []))
    return out


def cached_detector_ids(api: Api, region: str, cache: Cache | None, now: pd.Timestamp | None) -> list[str]:
    """:func:`detector_ids`, remembered for ``DETECTORS_TTL`` when a cache is given."""
    if cache is None or now is None:
        return detector_ids(api, region)
    key = f"guardduty-detectors:{api.account or ''}:{region}"
    hit = cache.get(key)
    if hit is not None and now - pd.Timestamp(hit[1]) < DETECTORS_TTL:
        return [str(d) for d in hit[0]]
    ids = detector_ids(api, region)
    cache.put(key, ids, now.isoformat())
    return ids


def scan_region(api: Api, region: str, start: pd.Timestamp, end: pd.Timestamp, cache: Cache | None = None,
                now: pd.Timestamp | None = None) -> RegionFindings:
    """Crypto findings of one (account, region); errors are kept in the result rather than raised."""
    result = RegionFindings(region, api.account)
    try:
        for det in cached_detector_ids(api, region, cache, now):
            ids = finding_ids(api, region, det, start, end)
            result.findings += [f for f in get_findings(api, region, det, ids) if is_crypto(str(f.get("Type", "")))]
    except AwsCallError as e:
        if e.code in DENIED_CODES:
            result.denied = e
        else:
            result.error = str(e)
    except ProviderError as e:
        result.error = str(e)
    except Exception as e:  # a thread must not take the other regions down with it
        result.error = f"aws: GuardDuty in {region} failed: {type(e).__name__}"
    if result.error and api.account:
        result.error = f"account {api.account}: {result.error}"
    return result


def scan(targets: list[tuple[Api, str]], start: pd.Timestamp, end: pd.Timestamp, *, max_workers: int,
         deadline: float | None = None, clock: Callable[[], float] = time.monotonic, cache: Cache | None = None,
         now: pd.Timestamp | None = None) -> list[RegionFindings]:
    """Every (account, region) pair on a pool of ``max_workers`` threads (clients are shared: see ``_api``);
    pairs not started before ``deadline`` come back ``skipped``."""
    if not targets:
        return []

    def one(t: tuple[Api, str]) -> RegionFindings:
        if deadline is not None and clock() >= deadline:
            return RegionFindings(t[1], t[0].account, skipped=True)
        return scan_region(t[0], t[1], start, end, cache, now)

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(targets)))) as pool:
        return list(pool.map(one, targets))


def denied_notes(results: list[RegionFindings]) -> list[str]:
    """One note per denied action, naming the regions (or account/region pairs) it was denied in."""
    where: dict[str, list[str]] = {}
    for r in results:
        if r.denied is not None:
            where.setdefault(r.denied.action, []).append(f"{r.account}/{r.region}" if r.account else r.region)
    return [f"GuardDuty findings skipped in {', '.join(places)}: access denied for {action}; grant the IAM "
            f"action {action} to the role or user costwatch runs as" for action, places in where.items()]


def _node_and_cluster(resource: dict[str, Any]) -> tuple[str | None, str | None]:
    inst = resource.get("InstanceDetails") or {}
    node = inst.get("InstanceId") or None
    tags = {str(t.get("Key")): str(t.get("Value", "")) for t in inst.get("Tags", []) or []}
    eks = resource.get("EksClusterDetails") or {}
    cluster = eks.get("Name") or next((tags[k] for k in CLUSTER_TAGS if tags.get(k)), None)
    return (str(node) if node else None), (str(cluster) if cluster else None)


def findings_frame(results: list[RegionFindings], start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """One row per finding updated in [start, end]; the same finding seen from two accounts (a delegated
    administrator and the member) is kept once."""
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    lo = lo.tz_convert("UTC") if lo.tzinfo else lo.tz_localize("UTC")
    hi = hi.tz_convert("UTC") if hi.tzinfo else hi.tz_localize("UTC")
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for r in results:
        for f in r.findings:
            updated = _utc(f.get("UpdatedAt"))
            if updated is not None and not lo <= updated <= hi:
                continue
            service = f.get("Service") or {}
            node, cluster = _node_and_cluster(f.get("Resource") or {})
            account = str(f.get("AccountId") or r.account or "")
            fid = str(f.get("Id") or "")
            rows[(account, fid)] = {
                "provider": "aws", "project": account, "region": str(f.get("Region") or r.region),
                "node": node, "cluster": cluster, "type": str(f.get("Type", "")),
                "severity": float(f.get("Severity") or 0.0), "title": f.get("Title"), "finding_id": fid,
                "first_seen": _utc(service.get("EventFirstSeen")) or _utc(f.get("CreatedAt")),
                "last_seen": _utc(service.get("EventLastSeen")) or updated,
            }
    if not rows:
        return empty_findings()
    frame = pd.DataFrame(list(rows.values()), columns=list(FINDING_COLUMNS)).astype(FINDING_COLUMNS)
    return frame.sort_values(["first_seen", "finding_id"], ignore_index=True)
