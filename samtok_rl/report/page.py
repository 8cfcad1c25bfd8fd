"""The report's HTML: one static page (inline CSS and script, pictures in a folder beside it), no server, no network.

The page carries its own check: opened as `index.html#selfcheck`, it loads every picture and, at the window's load
event, appends
`<pre id="selfcheck">{"images": n, "broken": [...], "errors": [...]}</pre>` (pictures that failed to load, script
errors), which the headless-browser test reads.
"""

from __future__ import annotations

import html
from collections.abc import Sequence


__all__ = ["esc", "figure", "kind_chips", "legend", "page", "table"]

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 3em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: .8em 0 .2em; } h2 { font-size: 1.15em; margin: 1.4em 0 .4em; }
.sub, .note { color: #666; } .warn { color: #a00; font-weight: 600; }
table { border-collapse: collapse; margin: .4em 0; } td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
.plots img { width: 400px; margin: 4px; border: 1px solid #ddd; background: #fff; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6em; margin: .8em 0; }
.card h3 { font-size: 1em; margin: 0 0 .4em; }
.row { display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }
figure { margin: 0; width: 230px; } figure img { width: 230px; border: 1px solid #ccc; display: block; }
figure table { font-size: 11px; } figure td, figure th { padding: 0 5px; }
figcaption { font-size: 12px; margin-top: 3px; }
.text { font: 11px/1.3 ui-monospace, monospace; white-space: pre-wrap; word-break: break-all; max-height: 9em;
        overflow: auto; background: #f6f6f6; padding: 3px; margin-top: 3px; }
.chip { display: inline-block; width: .9em; height: .9em; border-radius: 2px; vertical-align: middle; margin-right: 2px; }
.span { border-radius: 2px; padding: 0 1px; color: #fff; } .span.other { background: #999; }
.kind { display: inline-block; background: #fde2e2; color: #800; border-radius: 3px; padding: 0 4px; margin-right: 3px;
        font-size: 11px; }
nav.filters { position: sticky; top: 0; background: #fafafa; padding: .4em 0; border-bottom: 1px solid #ddd; z-index: 1; }
nav.filters label { margin-right: 1em; }
"""

# In the head, before any other script: collects the page's script errors for the self-check.
_ERRORS = (
    "window.samtokErrors = []; "
    "window.addEventListener('error', function (e) { samtokErrors.push(String(e.message || e)); });"
)

_SCRIPT = """
(function () {
  var errors = window.samtokErrors;
  function applyFilter(kind) {
    document.querySelectorAll('.card[data-kinds]').forEach(function (card) {
      var kinds = card.getAttribute('data-kinds').split(' ');
      card.style.display = (kind === 'all' || kinds.indexOf(kind) >= 0) ? '' : 'none';
    });
  }
  document.querySelectorAll('nav.filters input').forEach(function (input) {
    input.addEventListener('change', function () { applyFilter(input.value); });
  });
  if (location.hash === '#selfcheck') {
    // Every picture loads now, and the window's load event waits for all of them; then each is checked.
    var images = Array.prototype.slice.call(document.images);
    images.forEach(function (img) { img.loading = 'eager'; });
    window.addEventListener('load', function () {
      var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); })
                         .map(function (img) { return img.getAttribute('src'); });
      var out = document.createElement('pre');
      out.id = 'selfcheck';
      out.textContent = JSON.stringify({images: images.length, broken: broken, errors: errors});
      document.body.appendChild(out);
    });
  }
})();
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def table(header: Sequence[str], rows: Sequence[Sequence], cls: str = "") -> str:
    """An HTML table; cells are escaped, floats shown with 3 decimals."""

    def cell(value, tag):
        text = f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else value)
        return f"<{tag}>{esc(text)}</{tag}>"

    head = "".join(cell(h, "th") for h in header)
    body = "".join("<tr>" + "".join(cell(v, "td") for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>'


def legend(items: Sequence[tuple[str, str]]) -> str:
    """Colour chips with their labels: `[(css colour, label), ...]`."""
    return " ".join(f'<span class="chip" style="background:{c}"></span>{esc(label)}' for c, label in items)


def kind_chips(kinds, labels: dict[str, str]) -> str:
    """The failure kinds of a card as labelled chips, in a fixed order."""
    return "".join(f'<span class="kind">{esc(labels[k])}</span>' for k in sorted(kinds))


def figure(src: str, caption_html: str, alt: str) -> str:
    """A picture with a caption (`caption_html` is already escaped); pictures load lazily as they scroll in."""
    return f'<figure><img src="{esc(src)}" alt="{esc(alt)}" loading="lazy"><figcaption>{caption_html}</figcaption></figure>'


def page(title: str, subtitle: str, body: str, filters: Sequence[tuple[str, str, int]] = ()) -> str:
    """The whole page. `filters`: `(kind, label, count)` radio buttons that show only the cards of one kind."""
    nav = ""
    if filters:
        buttons = ['<label><input type="radio" name="kind" value="all" checked> all</label>']
        buttons += [
            f'<label><input type="radio" name="kind" value="{esc(kind)}"> {esc(label)} ({count})</label>'
            for kind, label, count in filters
        ]
        nav = '<nav class="filters">show: ' + "".join(buttons) + "</nav>"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f'<style>{_CSS}</style><script>{_ERRORS}</script></head><body><h1>{esc(title)}</h1><p class="sub">{subtitle}</p>{nav}{body}'
        f"<script>{_SCRIPT}</script></body></html>\n"
    )
