"""The page: one self-contained HTML document (inline CSS, inline SVG, a few lines of inline
script), a summary at the top, one <section> per input with its JSON embedded.

Nothing is fetched: a Content-Security-Policy `default-src 'none'` forbids every request (images,
fonts, scripts, styles from anywhere but the page itself), so even a browser that would follow a
stray URL makes none.  The embedded JSON of section N is `<script type="application/json"
id="data-N">`: the document every number of that section was read from (the audit of an adapter
given as input, the series read from a run log), with `<`, `>` and `&` escaped as \\u003c… so it
cannot close its script element.  The inline script only opens collapsed tables before printing
and shows the embedded JSON on request; the page reads fully without it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from ..version import __version__
from .base import Built, SectionKind
from .html import esc, facts, fmt, notes

CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"

CSS = """
:root{--fg:#1a1a1a;--muted:#555;--line:#ccc;--bg:#fff;--accent:#0072B2}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg);
margin:0 auto;max-width:1100px;padding:1rem}
h1{font-size:1.6rem;margin:.2rem 0}
h2{font-size:1.3rem;border-bottom:2px solid var(--accent);padding-bottom:.2rem}
.meta,.missing,figcaption{color:var(--muted)}
nav ol{padding-left:0}nav li{display:inline-block;margin:0 1.4rem .2rem 0}
code,.path{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;overflow-wrap:anywhere}
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(9.5rem,1fr));gap:.4rem;margin:.5rem 0}
.facts div{border:1px solid var(--line);border-radius:4px;padding:.3rem .5rem}
.facts dt{font-size:.8rem;color:var(--muted)}.facts dd{margin:0;font-weight:600}
figure.plot{margin:1rem 0;border-top:1px solid var(--line);padding-top:.5rem;break-inside:avoid}
.svgwrap{overflow-x:auto;max-width:100%}
.svgwrap svg{width:100%;height:auto;display:block}
/* matplotlib writes each line's style inline: only !important overrides it */
.spectra g[id^="sv"]:hover path{stroke-width:3px!important;stroke-opacity:1!important}
.tablewrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.85rem;margin:.3rem 0}
caption{text-align:left;font-weight:600;padding:.2rem 0}
th,td{border:1px solid var(--line);padding:.15rem .4rem;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
thead th{background:#f2f2f2}
.badge{font-weight:700;padding:0 .3rem;border:1px solid currentColor;border-radius:3px}
details>summary{cursor:pointer;color:var(--accent)}
.notes{color:var(--muted);font-size:.9rem}
pre.json{max-height:30rem;overflow:auto;background:#f7f7f7;padding:.5rem;font-size:.75rem}
@media (max-width:600px){body{font-size:14px;padding:.5rem}h1{font-size:1.3rem}}
@media print{nav,.showjson,pre.json{display:none}body{max-width:none}h2{break-after:avoid}
section.input{break-before:page}a{color:inherit;text-decoration:none}}
"""

SCRIPT = """
addEventListener("beforeprint",()=>{for(const d of document.querySelectorAll("details"))d.open=true});
for(const b of document.querySelectorAll("button.showjson")){b.addEventListener("click",()=>{
const pre=document.getElementById(b.dataset.pre);
if(!pre.textContent){pre.textContent=JSON.stringify(JSON.parse(document.getElementById(b.dataset.src).textContent),null,1)}
pre.hidden=!pre.hidden;b.textContent=pre.hidden?"Show the JSON":"Hide the JSON"})}
document.documentElement.dataset.ready="1";
"""


@dataclass(frozen=True)
class Part:
    kind: SectionKind
    source: str  # the input as given on the command line
    built: Built


def embed_json(data: object) -> str:
    text = json.dumps(data, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _summary(parts: Sequence[Part]) -> str:
    rows = []
    for i, p in enumerate(parts, 1):
        shown = [(k, v) for k, v in p.built.facts if v is not None][:5]
        text = "; ".join(f"{esc(k)}: {fmt(v)}" for k, v in shown)
        rows.append(
            f'<tr><td class="num">{i}</td><td><a href="#s{i}">{esc(p.kind.title)}</a></td>'
            f'<td class="path">{esc(p.source)}</td><td>{text}</td></tr>'
        )
    return (
        '<section id="summary"><h2>Summary</h2><div class="tablewrap"><table><caption>Inputs</caption>'
        '<thead><tr><th scope="col">#</th><th scope="col">section</th><th scope="col">input</th>'
        f'<th scope="col">headline</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div></section>'
    )


def _section(i: int, p: Part) -> str:
    b = p.built
    return (
        f'<section id="s{i}" class="input {esc(p.kind.name)}" data-kind="{esc(p.kind.name)}">'
        f'<h2>{i}. {esc(p.kind.title)}: <span class="path">{esc(p.source)}</span></h2>'
        f"{facts(b.facts)}{notes(b.notes)}{b.body}"
        f'<p class="meta">Every number in this section comes from the JSON embedded in the page '
        f'(<code>script#data-{i}</code>). <button type="button" class="showjson" data-src="data-{i}" '
        f'data-pre="pre-{i}">Show the JSON</button></p><pre class="json" id="pre-{i}" hidden></pre>'
        f'<script type="application/json" id="data-{i}">{embed_json(b.data)}</script></section>'
    )


def render(title: str, parts: Sequence[Part]) -> str:
    nav = "".join(f'<li><a href="#s{i}">{esc(p.kind.title)}</a></li>' for i, p in enumerate(parts, 1))
    body = "".join(_section(i, p) for i, p in enumerate(parts, 1))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta name="generator" content="lorascope {esc(__version__)}">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f'<header><h1>{esc(title)}</h1><p class="meta">lorascope {esc(__version__)} report, '
        f"{len(parts)} input{'s' if len(parts) != 1 else ''}; opens offline, fetches nothing.</p></header>"
        f'<nav aria-label="Sections"><ol><li><a href="#summary">Summary</a></li>{nav}</ol></nav>'
        f"<main>{_summary(parts)}{body}</main><script>{SCRIPT}</script></body></html>\n"
    )
