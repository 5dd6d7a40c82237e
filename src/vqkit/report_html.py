"""Small HTML building blocks for the report: escaping, tables, embedded images, the page shell.

Everything a page needs is inline (CSS in a <style> element, images as base64 data URIs), so the
file opens anywhere without a network. Every piece of text goes through ``esc``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vqkit.report_plots import DPI

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Small pixel images (28×28 digits) are enlarged by a whole factor up to about this CSS width,
# never more than MAX_PIXEL_SCALE times; the page shrinks them again on narrow screens.
PIXEL_TARGET_WIDTH = 520
MAX_PIXEL_SCALE = 4
# Plots are rendered at DPI; shown at 96 CSS px per inch they stay sharp on dense screens.
PLOT_DENSITY = DPI / 96


@dataclass
class Section:
    """One titled part of the report; ``id`` is its anchor (and what tests look for)."""

    id: str
    title: str
    body: str
    lead: str = ""  # one sentence under the title saying what the section shows


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A number for a table cell: ints with thousands separators, floats to ``digits``
    significant figures."""
    if value is None or isinstance(value, bool):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:,.0f}"
    return str(value)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    numeric_from: int = 1,
    caption: str = "",
    caption_shown: bool = True,
) -> str:
    """An HTML table; cells are escaped, columns from ``numeric_from`` on are right-aligned.
    ``caption`` names it (see :func:`table_html`)."""
    head = "".join(
        f'<th scope="col"{" class=num" if i >= numeric_from else ""}>{esc(h)}</th>'
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if i >= numeric_from else ''}>{esc(fmt(cell))}</td>"
            for i, cell in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return table_html(head, body, caption, caption_shown)


def table_html(head: str, body: str, caption: str = "", caption_shown: bool = True) -> str:
    """A scrollable table from ready-made header cells and body rows (already escaped).

    ``caption`` is its name, which screen readers announce with it: shown as a heading (an
    h3 inside the caption, so a reader's list of headings still finds the table), or only to
    them (``caption_shown`` False) where a heading or summary above names it already."""
    if not caption:
        named = ""
    elif caption_shown:
        named = f"<caption><h3>{esc(caption)}</h3></caption>"
    else:
        named = f"<caption class=hidden>{esc(caption)}</caption>"
    return (
        # Focusable: a keyboard (and Safari, whose scrolling boxes are not) can scroll it.
        f'<div class="scroll" tabindex="0"><table>{named}<thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of PNG bytes that Pillow can fully decode, else None."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: a truncated file fails here
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def block_scale(data: bytes) -> int:
    """The factor a PNG was enlarged by with each pixel repeated in a square block (vqkit saves
    its pixel grids at 2x): the largest of 4, 3, 2 whose blocks are all uniform, else 1 (a
    figure with text or smoothed lines)."""
    with Image.open(io.BytesIO(data)) as opened:
        pixels = np.asarray(opened.convert("RGBA"))
    height, width = pixels.shape[:2]
    for factor in (4, 3, 2):
        if height % factor or width % factor:
            continue
        small = pixels[::factor, ::factor]
        if np.array_equal(np.repeat(np.repeat(small, factor, 0), factor, 1), pixels):
            return factor
    return 1


def image(
    data: bytes,
    alt: str,
    caption: str = "",
    *,
    pixelated: bool = False,
    density: float = PLOT_DENSITY,
) -> str:
    """A <figure> with ``data`` (checked PNG bytes) embedded as a data URI; a plot is shown at
    ``density`` image pixels per CSS pixel (its dpi / 96), so its text keeps its point size."""
    size = png_size(data)
    if size is None:
        raise ValueError("not a readable PNG")
    width, height = size
    if pixelated:
        # Pixel grids (digits saved as blocks of repeated pixels) are shown at a whole multiple
        # of their source pixels with hard edges, so a dense screen or a zoom keeps them crisp;
        # figures with text are shown at their own size, smoothed when a screen shrinks them.
        block = block_scale(data)
        scale = max(1, min(MAX_PIXEL_SCALE, PIXEL_TARGET_WIDTH // (width // block)))
        shown = width // block * scale
        css_class = "pixels" if block > 1 or scale > 1 else "natural"
    else:
        shown = round(width / density)
        css_class = "plot"
    source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    caption_html = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><img class="{css_class}" src="{source}" alt="{esc(alt)}" '
        f'width="{width}" height="{height}" style="width:{shown}px">{caption_html}</figure>'
    )


def cards(items: Sequence[tuple[str, str, str]]) -> str:
    """Headline numbers: (label, value, detail) boxes in a wrapping row."""
    boxes = "".join(
        f'<div class="card"><div class="label">{esc(label)}</div>'
        f'<div class="value">{esc(value)}</div><div class="detail">{esc(detail)}</div></div>'
        for label, value, detail in items
    )
    return f'<div class="cards">{boxes}</div>'


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


STYLE = """
:root { --fg:#1f2937; --muted:#6b7280; --line:#e5e7eb; --bg:#ffffff; --soft:#f8fafc;
        --accent:#2563eb; }
* { box-sizing:border-box; }
body { margin:0; color:var(--fg); background:var(--bg); line-height:1.5;
       font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif; }
header, main, footer { max-width:1120px; margin:0 auto; padding:0 20px; }
header { padding-top:28px; }
h1 { font-size:1.7rem; margin:0 0 4px; letter-spacing:-0.01em; }
h2 { font-size:1.25rem; margin:0 0 4px; padding-top:8px; }
h3, caption { font-size:1rem; font-weight:bold; margin:18px 0 6px; }
caption { text-align:left; }
caption > h3 { margin:0; }
.eyebrow { margin:0; font-size:0.8rem; color:var(--accent); text-transform:uppercase;
           letter-spacing:0.06em; font-weight:600; }
.subtitle { color:var(--muted); margin:0 0 18px; }
code { font:0.9em ui-monospace,SFMono-Regular,Menlo,Consolas,monospace; }
nav { position:sticky; top:0; z-index:1; background:rgba(255,255,255,0.95);
      border-bottom:1px solid var(--line); }
nav div { max-width:1120px; margin:0 auto; padding:8px 20px; display:flex; flex-wrap:wrap;
          gap:4px 16px; font-size:0.9rem; }
nav a { color:var(--accent); text-decoration:none; }
nav a:hover { text-decoration:underline; }
section { padding:22px 0; border-bottom:1px solid var(--line); scroll-margin-top:48px; }
.lead { color:var(--muted); margin:0 0 14px; }
.cards { display:grid; grid-template-columns:repeat(auto-fit,minmax(150px,1fr)); gap:12px;
         margin:0 0 22px; }
.card { border:1px solid var(--line); border-radius:10px; padding:12px 14px;
        background:var(--soft); }
.card .label { font-size:0.8rem; color:var(--muted); text-transform:uppercase;
               letter-spacing:0.04em; }
.card .value { font-size:1.45rem; font-weight:600; font-variant-numeric:tabular-nums; }
.card .detail { font-size:0.85rem; color:var(--muted); }
.grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(260px,1fr)); gap:18px;
        align-items:start; }
figure { margin:0 0 12px; }
figure img { display:block; max-width:100%; height:auto; border-radius:4px; }
img.pixels { image-rendering:pixelated; }
img.pixels, img.natural { border:1px solid var(--line); }
figcaption { font-size:0.88rem; color:var(--muted); margin-top:4px; }
.scroll { overflow-x:auto; }
.hidden { position:absolute; width:1px; height:1px; overflow:hidden; clip-path:inset(50%); }
table { border-collapse:collapse; margin:6px 0 12px; font-size:0.92rem; }
th, td { padding:5px 12px; border-bottom:1px solid var(--line); text-align:left;
         white-space:nowrap; }
th { font-weight:600; background:var(--soft); }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
tbody tr:nth-child(even) { background:#fbfcfd; }
.bar { display:inline-block; height:0.7em; background:var(--accent); border-radius:2px;
       vertical-align:middle; }
.scores { font-size:0.88rem; color:var(--fg); margin:2px 0 0; }
.note { color:#92400e; background:#fffbeb; border:1px solid #fde68a; border-radius:6px;
        padding:6px 10px; font-size:0.9rem; }
details summary { cursor:pointer; color:var(--accent); margin:6px 0; }
footer { color:var(--muted); font-size:0.85rem; padding-top:16px; padding-bottom:40px; }
@media (max-width:600px) { h1 { font-size:1.35rem; } .card .value { font-size:1.2rem; }
  header, main, footer { padding-left:12px; padding-right:12px; }
  /* On a phone a wide table's last columns (the scores) would sit off screen: cells wrap.
     Headers only between words (split inside them they read as letters stacked, "e p o c
     h"); a wider table than the screen scrolls. */
  table { font-size:0.75rem; }
  th, td { padding:3px 3px; white-space:normal; overflow-wrap:break-word; }
  th { font-size:0.72rem; }
  td.num { white-space:nowrap; overflow-wrap:normal; }
  /* A wrapped link bar is three lines tall: it would cover each section's title it jumps to. */
  nav { position:static; } }
@media print {
  /* On paper a scrolling box is cut at the page edge: tables wrap instead, nothing is
     hidden in a closed box, and a figure or row is not split across pages. */
  nav { display:none; }
  .scroll { overflow:visible; }
  table { font-size:0.75rem; }
  th, td { white-space:normal; padding:3px 6px; }
  figure, tr { break-inside:avoid; }
  details::details-content { content-visibility:visible; display:block; } }
"""


def page(
    title: str,
    header: str,
    sections: Sequence[Section],
    footer: str,
    meta: dict[str, str] | None = None,
) -> str:
    """The whole document: header, a link bar to each section, the sections, a footer;
    ``meta`` becomes ``<meta name content>`` tags at the top, for programs that read the page."""
    links = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        *(f'<meta name="{esc(k)}" content="{esc(v)}">' for k, v in (meta or {}).items()),
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="light">',  # its plots are drawn on white
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<header>{header}</header>",
        f"<nav><div>{links}</div></nav>" if sections else "",
        "<main>",
    ]
    for s in sections:
        lead = f'<p class="lead">{esc(s.lead)}</p>' if s.lead else ""
        parts.append(f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>{lead}{s.body}</section>')
    parts += ["</main>", f"<footer>{footer}</footer>", "</body></html>", ""]
    return "\n".join(parts)
