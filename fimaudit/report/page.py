"""The one HTML shell of every fimaudit report (audit dossier, scan, attack, clever, metrics, compare, certify,
bounds): the same stylesheet (screen and print), a Content-Security-Policy that forbids any request, a header
naming the command kind and the model, a facts table with the run's context, then the body.

Pure string functions: the same input gives the same bytes.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

# Screen: the page uses the window's width (a max of 120em keeps lines readable on very wide screens), plots sit
# in a grid of as many columns as fit at 34em each. Print (A4 or Letter, portrait): one plot column, no clipped
# tables, sections do not break across pages where they fit on one, colours kept.
CSS = """
:root{--fg:#1d2329;--muted:#5b6570;--line:#cfd6dd;--head:#eef2f5;--ok:#1e7d32;--bad:#b71c1c;--warn:#e0b000}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);margin:0 auto;
padding:1.2em clamp(.8em,2.5vw,2.5em);max-width:120em;line-height:1.4;font-size:15px}
h1{font-size:1.6em;margin:.2em 0 .1em}h2{font-size:1.2em;margin:1.4em 0 .4em;border-bottom:1px solid var(--line);
padding-bottom:.15em}h3{font-size:1em;margin:1em 0 .3em}
p{margin:.4em 0}.muted,.sub{color:var(--muted)}.sub{margin:0 0 .6em}
code{background:#f2f4f6;padding:0 .25em;border-radius:3px;font-size:.92em;overflow-wrap:anywhere}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.5em 0 1em;font-variant-numeric:tabular-nums}
th,td{border:1px solid var(--line);padding:.22em .6em;text-align:right;vertical-align:top}
th{background:var(--head);font-weight:600}td.l,th.l{text-align:left}
table.checks{width:100%}table.checks td:first-child{min-width:16em}table.checks td:last-child{min-width:12em}
table.checks code{overflow-wrap:break-word}
table.blocks td:first-child{overflow-wrap:anywhere;max-width:28em}table.blocks td:nth-child(3){white-space:nowrap}
table.facts{width:100%}table.facts th{width:13em;text-align:left;white-space:nowrap}
table.facts td{text-align:left;overflow-wrap:anywhere}
.pass{color:var(--ok);font-weight:bold}.fail{color:var(--bad);font-weight:bold}
.verdict{font-size:1.3em;padding:.3em .8em;border-radius:4px;display:inline-block;margin:.4em 0}
.verdict.pass{background:#e8f5e9}.verdict.fail{background:#ffebee}.verdict.none{background:#f2f4f6}
.unavailable,.note{background:#fff6d6;padding:.45em .7em;border-left:4px solid var(--warn);margin:.5em 0}
.warning{background:#ffebee;padding:.5em .8em;border-left:4px solid var(--bad);margin:.6em 0}
.warning ul{margin:.3em 0 0 1.2em;padding:0}
.vacuous{color:#8a5a00;font-weight:600}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(30em,1fr));gap:0 2em}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(34em,1fr));gap:.5em 2em}
.plots>section{min-width:0}
figure{margin:.5em 0}figure.plot{max-width:56em}figure svg{width:100%;height:auto;display:block}
img.thumb{width:84px;height:84px;image-rendering:pixelated;border:1px solid var(--line)}
footer{margin-top:2em;color:var(--muted);font-size:.9em;border-top:1px solid var(--line);padding-top:.5em}
@media (max-width:40em){.cols,.plots{grid-template-columns:1fr}table.facts th{width:auto;white-space:normal}}
@page{margin:12mm 11mm}
@media print{
body{font-size:9.5pt;max-width:none;padding:0;-webkit-print-color-adjust:exact;print-color-adjust:exact}
h2,h3{break-after:avoid;page-break-after:avoid}
figure,tr,.warning,.unavailable,table.facts,.plots>section,#fisher,#bound,#clever,#validity,#certify,#worst-case
{break-inside:avoid;page-break-inside:avoid}
.plots{display:block}
figure svg{max-height:95mm;width:auto;max-width:100%;margin:0 auto}
.cols{display:block}.scroll{overflow:visible}
table{font-size:.95em}th,td{padding:.12em .4em}
thead{display:table-header-group}
a{color:inherit;text-decoration:none}
}
"""

e = html.escape


def cell(value: object) -> str:
    return e("-" if value is None else str(value))


def table(head: Sequence[str], rows: Iterable[Sequence[str]], left: int | Iterable[int] = 1, cls: str = "",
          raw: bool = False) -> str:
    """A table: the first ``left`` columns (or the columns numbered in ``left``) left-aligned; cells are escaped
    unless ``raw`` (already HTML)."""
    lefts = set(range(left)) if isinstance(left, int) else set(left)

    def tds(row: Sequence[str], tag: str) -> str:
        return "".join(f"<{tag}{' class=l' if i in lefts else ''}>{c if raw else e(str(c))}</{tag}>"
                       for i, c in enumerate(row))

    body = "".join(f"<tr>{tds(r, 'td')}</tr>" for r in rows)
    return (f'<div class="scroll"><table{f" class={cls}" if cls else ""}><thead><tr>{tds(head, "th")}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def facts(rows: Iterable[tuple[str, str]], table_id: str = "context") -> str:
    """Two columns, name and value (values escaped); empty values are left out."""
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows if v not in (None, ""))
    return f'<div class="scroll"><table class="facts" id="{table_id}"><tbody>{body}</tbody></table></div>'


def section(sid: str, title: str, body: str, cls: str = "") -> str:
    return f'<section id={sid}{f" class={cls}" if cls else ""}><h2>{e(title)}</h2>{body}</section>'


def page(kind: str, model: str | None, body: str, footer: str, subtitle: str = "") -> str:
    """The whole document: ``kind`` is the command (audit, scan, attack, ...), ``model`` its model path."""
    title = f"fimaudit {kind}" + (f": {model}" if model else "")
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{e(title)}</title><style>{CSS}</style></head>"
        f'<body data-kind="{e(kind)}"><header><h1>fimaudit {e(kind)}</h1>'
        + (f"<p class=sub><code>{e(model)}</code>{(' ' + subtitle) if subtitle else ''}</p>" if model else
           (f"<p class=sub>{subtitle}</p>" if subtitle else ""))
        + f"</header><main>{body}</main><footer>{footer}</footer></body></html>\n"
    )


def num(x: object, digits: int = 4) -> str:
    """A number for a table: g-format with ``digits`` significant digits; '-' for None."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return str(x)


def pct(x: object) -> str:
    return "-" if x is None else f"{100 * float(x):.1f}%"  # type: ignore[arg-type]


def versions_text(v: dict | None) -> str:
    if not v:
        return ""
    return ", ".join(f"{k} {val}" for k, val in v.items() if val and k != "provider")


def preprocessing_text(pp: dict | None) -> str:
    """'x * 0.003922, then (x - 0.286) / 0.353 per channel (from --scale/--mean/--std)'."""
    if not pp:
        return ""
    scale = pp.get("scale")
    if scale == 1 and all(m == 0 for m in pp.get("mean") or [0]) and all(s == 1 for s in pp.get("std") or [1]):
        return "none: the data are fed as stored (data units are model-input units)" + (
            f" ({pp['how']})" if pp.get("how") else "")
    mean = ", ".join(f"{m:g}" for m in pp.get("mean") or [])
    std = ", ".join(f"{s:g}" for s in pp.get("std") or [])
    out = f"x × {scale:.6g}" if isinstance(scale, (int, float)) else "x"
    if mean or std:
        out += f", then (x − [{mean}]) / [{std}] per channel"
    if pp.get("how"):
        out += f" ({pp['how']})"
    return out
