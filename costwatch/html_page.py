"""The one HTML page shell shared by the HTML report (``costwatch.html_report``) and the email digest
(``costwatch.digest``), so both look alike and follow the same safety rules.

Invariants:

* Self-contained: no ``<script>``, no external stylesheet, font or image; images are ``data:`` URIs.  The
  page carries a Content-Security-Policy that forbids scripts and every remote load, so even a bug that let
  markup through could not run code or call home, and the page works offline.
* Every string from data goes through :func:`esc`: hidden characters (controls, bidi overrides, zero-width)
  become visible escapes (``costwatch.safetext.terminal_safe``), then ``html.escape`` (quotes included).
  Builders here take plain strings and escape them themselves; only :class:`Markup` passes as it is, and
  only these helpers make one.
* The CSS is inline (a ``<style>`` block) and plain, so it renders the same in a browser and in mail
  clients that keep ``<style>`` in the head.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

from .safetext import terminal_safe

# default-src 'none' also blocks fetch, frames, fonts, media and objects; img-src data: lets charts show
# (frame-ancestors is not allowed in a <meta> CSP: Chromium logs a console error for it)
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;font-size:14px;color:#1f2328;
margin:0 auto;max-width:1280px;padding:16px 20px;background:#fff}
h1{font-size:22px;margin:4px 0 2px}h2{font-size:18px;margin:22px 0 8px;border-bottom:1px solid #d0d7de}
h3{font-size:15px;margin:4px 0}p{margin:4px 0}.muted{color:#656d76}.small{font-size:12px}
table{border-collapse:collapse;margin:6px 0 10px;font-size:13px}.wide{overflow-x:auto}
td:first-child{white-space:nowrap}th,td{padding:3px 7px;border-bottom:1px solid #e4e7eb;
text-align:left;vertical-align:top}th{background:#f6f8fa;font-weight:600;white-space:nowrap}td.num,th.num{text-align:right;
font-variant-numeric:tabular-nums;white-space:nowrap}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;
min-width:150px;max-width:300px}.card b{font-size:18px;display:block}
.alert{border:1px solid #d0d7de;border-left:6px solid #57606a;border-radius:6px;padding:10px 14px;margin:12px 0}
.sev-critical{border-left-color:#b00020}.sev-high{border-left-color:#d84315}.sev-warning{border-left-color:#b26a00}
.sev-info{border-left-color:#0969da}.badge{display:inline-block;border-radius:10px;padding:0 8px;font-size:12px;
font-weight:600;color:#fff;background:#57606a}.badge.sev-critical{background:#b00020}.badge.sev-high{background:#d84315}
.badge.sev-warning{background:#b26a00}.badge.sev-info{background:#0969da}
.up{color:#b00020}.down{color:#1a7f37}.over{color:#b00020;font-weight:600}
img.chart{max-width:100%;height:auto;border:1px solid #e4e7eb;margin-top:6px}
ul{margin:4px 0 8px 18px;padding:0}code{font-size:12px;background:#f6f8fa;padding:0 3px;border-radius:3px}
"""


class Markup(str):
    """HTML built by this module (already escaped); anything else is text and gets escaped."""


def esc(value: object, limit: int | None = 500) -> Markup:
    """Text from data as inert HTML: hidden characters shown as escapes, then HTML-escaped (quotes too)."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(terminal_safe(value, limit), quote=True))


def tag(name: str, content: object = "", cls: str = "", **attrs: str) -> Markup:
    """``<name class=... attr=...>content</name>``; attribute values and text content are escaped."""
    extra = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v, None)}"' for k, v in attrs.items())
    klass = f' class="{esc(cls, None)}"' if cls else ""
    return Markup(f"<{name}{klass}{extra}>{esc(content, 2000)}</{name}>")


def join(parts: Iterable[object], sep: str = "") -> Markup:
    return Markup(sep.join(esc(p, None) for p in parts))


def para(text: object, cls: str = "") -> Markup:
    return tag("p", text, cls)


def items(lines: Iterable[object]) -> Markup:
    lis = [tag("li", line) for line in lines]
    return tag("ul", join(lis)) if lis else Markup("")


def table(head: Sequence[str], rows: Iterable[Sequence[object]], numeric: Iterable[int] = ()) -> Markup:
    """A table; ``numeric`` are the column indexes aligned right (money, percentages)."""
    nums = set(numeric)
    th = join(tag("th", h, "num" if i in nums else "") for i, h in enumerate(head))
    body = [tag("tr", join(tag("td", c, "num" if i in nums else "") for i, c in enumerate(row))) for row in rows]
    return tag("table", join([tag("tr", th), *body]))


def image(png: bytes, alt: str) -> Markup:
    """A PNG inlined as a ``data:`` URI (the CSP's only image source)."""
    import base64

    data = base64.b64encode(png).decode("ascii")
    return Markup(f'<img class="chart" alt="{esc(alt, 300)}" src="data:image/png;base64,{data}">')


def page(title: str, body: Iterable[object]) -> str:
    """The whole document: CSP, inline CSS, no scripts, nothing fetched."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="referrer" content="no-referrer">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title, 200)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(esc(b, None) for b in body) + "\n</body></html>\n")


def money(x: float | None, currency: str, signed: bool = False) -> str:
    if x is None:
        return ""
    return (f"{x:+,.2f} {currency}" if signed else f"{x:,.2f} {currency}").rstrip()


def pct(x: float | None, signed: bool = True) -> str:
    if x is None:
        return ""
    return f"{x:+.0%}" if signed else f"{x:.0%}"


__all__ = ["CSP", "Markup", "esc", "image", "items", "join", "money", "page", "para", "pct", "table", "tag"]
