"""Signs that a pod is a cryptominer, read from its spec alone (images, commands, arguments, env values).

None of these proves mining and each can be evaded; they are listed as *reasons* next to the node's CPU
plateau so an owner can decide in a minute.  Weights rank pods for the few lines a Slack message has room
for: naming a miner or a stratum URL (3) beats a pool port or pool host (2), which beats an unexpected
registry or a brand-new namespace (1).

Images, commands and env values are free text an attacker chose, so every string shown is passed through
``clean``: control and bidi-override characters are escaped (no terminal escapes, no "Trojan Source"
reordering in a message) and length is capped.  Scanning itself reads at most ``SCAN_LIMIT`` characters of
each string and uses regexes without nested repetition, so a 10 MB argument costs milliseconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from costwatch.safetext import terminal_safe

SCAN_LIMIT = 65_536
MINING_WEIGHT = 2   # signs this heavy name mining itself; lighter ones (registry, new namespace) only add context

# Miner programs seen in the wild on hijacked containers (and two malware families that run XMRig).
MINER_PROGRAMS: tuple[str, ...] = (
    "xmrig", "xmr-stak", "xmrig-proxy", "minerd", "cpuminer", "cpuminer-opt", "ccminer", "cgminer", "bfgminer",
    "sgminer", "ethminer", "t-rex", "nbminer", "lolminer", "phoenixminer", "teamredminer", "gminer", "nanominer",
    "srbminer", "srbminer-multi", "bzminer", "wildrig", "kawpowminer", "claymore", "nheqminer", "kdevtmpfsi",
    "kinsing",
)
# Pool host names (a label of the host), for miners renamed to look innocent but still pointed at a pool.
POOL_HOSTS: tuple[str, ...] = (
    "minexmr", "supportxmr", "nanopool", "2miners", "f2pool", "herominers", "moneroocean", "hashvault", "c3pool",
    "nicehash", "unmineable", "ethermine", "xmrpool", "minergate", "dwarfpool", "miningpoolhub", "flexpool",
    "woolypooly", "kryptex", "zpool", "prohashing",
)
# Ports mining pools commonly listen on, only counted after a host (``pool.example:3333``).
POOL_PORTS: tuple[int, ...] = (3333, 4444, 5555, 6666, 7777, 10128, 13333, 14433, 14444, 20535, 45560, 45700)
# Options only miners take.
MINER_OPTIONS: tuple[str, ...] = ("--donate-level", "--randomx", "--cpu-max-threads-hint", "--coin", "--algo=rx",
                                  "--algo=kawpow", "--algo=ethash", "--algo=cryptonight")

_WORD = "(?<![a-z0-9])({})(?![a-z0-9])"
_PROGRAM = re.compile(_WORD.format("|".join(re.escape(p) for p in sorted(MINER_PROGRAMS, key=len, reverse=True))))
_POOL_HOST = re.compile(r"(?<![a-z0-9-])((?:[a-z0-9-]+\.)*(?:" + "|".join(re.escape(h) for h in POOL_HOSTS)
                        + r")\.[a-z]{2,10})(?![a-z0-9-])")
_STRATUM = re.compile(r"stratum\d?\+(?:tcp|ssl|tls)://[^\s'\"]{0,200}")
_POOL_PORT = re.compile(r"[a-z0-9\]]:(" + "|".join(str(p) for p in POOL_PORTS) + r")(?![0-9])")
_OPTION = re.compile("(?<![a-z0-9-])(" + "|".join(re.escape(o) for o in MINER_OPTIONS) + ")(?![a-z0-9])")

DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io", "registry.hub.docker.com", "docker.io"}


@dataclass(frozen=True)
class Sign:
    """One reason, with its weight for ranking."""

    text: str
    weight: int


def clean(text: object, limit: int = 200) -> str:
    """Printable, single-line, capped: control, format (bidi) and line-separator characters become ``\\xNN`` /
    ``\\uNNNN`` escapes so they can be seen but not acted on by a terminal, Slack or a mail client."""
    return terminal_safe(text, limit)


def split_image(image: str) -> tuple[str, str]:
    """``(registry, repository)`` the way the container runtime resolves a reference: the first path part is a
    registry only if it has a ``.`` or ``:`` or is ``localhost``; otherwise the image is on Docker Hub, and a
    one-part name is under ``library/`` (``nginx`` → ``docker.io``, ``library/nginx``)."""
    name = image.strip().split("@", 1)[0]
    slash, colon = name.rfind("/"), name.rfind(":")
    if colon > slash:
        name = name[:colon]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first.lower() == "localhost"):
        registry, repo = first.lower(), rest
    else:
        registry, repo = DOCKER_HUB, name if sep else f"library/{name}"
    if registry in _HUB_ALIASES:
        registry = DOCKER_HUB
    return registry, repo.lower()


def _allow_entry(entry: str) -> str:
    e = entry.strip().lower()
    e = e.split("://", 1)[1] if "://" in e else e
    e = e.rstrip("/")
    host, sep, rest = e.partition("/")
    if host in _HUB_ALIASES:
        host = DOCKER_HUB
    return f"{host}{sep}{rest}"


def allowed(image: str, allowlist: Iterable[str]) -> bool:
    """An allowlist entry is a registry (``registry.k8s.io``) or a registry path prefix
    (``us-docker.pkg.dev/my-project``, ``docker.io/library``); an empty allowlist allows everything."""
    entries = [_allow_entry(e) for e in allowlist if e.strip()]
    if not entries:
        return True
    registry, repo = split_image(image)
    full = f"{registry}/{repo}"
    return any(full == e or full.startswith(e + "/") for e in entries)


def _scan(text: str) -> str:
    return text[:SCAN_LIMIT].lower()


def image_signs(image: str, allowlist: Iterable[str]) -> list[Sign]:
    return list(_image_signs(image, tuple(allowlist)))


@lru_cache(maxsize=4096)
def _image_signs(image: str, allowlist: tuple[str, ...]) -> tuple[Sign, ...]:
    """Cached: a cluster runs thousands of pods from a few dozen images."""
    out: list[Sign] = []
    m = _PROGRAM.search(_scan(image))
    if m:
        out.append(Sign(f"miner image: {m.group(1)}", 3))
    if not allowed(image, allowlist):
        out.append(Sign(f"registry outside the allowlist: {clean(split_image(image)[0], 80)}", 1))
    return tuple(out)


def text_signs(texts: Iterable[str], where: str) -> list[Sign]:
    """Signs in commands and arguments (``where="command"``) or env values (``where="env"``); the strings are
    scanned as one newline-joined text, so a sign is reported once however many arguments repeat it."""
    low = "\n".join(_scan(t) for t in texts)
    if not low:
        return []
    out: list[Sign] = []
    m = _PROGRAM.search(low) if where == "command" else None
    if m:
        out.append(Sign(f"miner program in {where}: {m.group(1)}", 3))
    m = _STRATUM.search(low)
    if m:
        out.append(Sign(f"stratum URL in {where}: {clean(m.group(0), 100)}", 3))
    m = _POOL_HOST.search(low)
    if m:
        out.append(Sign(f"mining pool host in {where}: {clean(m.group(1), 80)}", 2))
    m = _POOL_PORT.search(low)
    if m:
        out.append(Sign(f"pool port {m.group(1)} in {where}", 2))
    m = _OPTION.search(low)
    if m:
        out.append(Sign(f"miner option in {where}: {m.group(1)}", 2))
    return out


def dedupe(signs: Iterable[Sign]) -> list[Sign]:
    """Strongest first, each text once (the same miner in ten containers is one reason)."""
    seen: dict[str, Sign] = {}
    for s in signs:
        if s.text not in seen:
            seen[s.text] = s
    return sorted(seen.values(), key=lambda s: -s.weight)


__all__ = ["MINER_PROGRAMS", "MINING_WEIGHT", "POOL_HOSTS", "POOL_PORTS", "Sign", "allowed", "clean", "dedupe",
           "image_signs", "split_image", "text_signs"]
