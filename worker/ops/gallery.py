"""The preview gallery's HTML: an index of every email x locale with warnings, and one page per email and locale.

Pages link to each other relatively (``index.html``, ``<slug>/<locale>.html``), so the same HTML
serves from a folder and from ``renewals preview --serve``. The email's own HTML is shown in an
iframe with an empty ``sandbox``: no scripts, no forms, no navigation of the gallery.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from jinja2 import DictLoader, Environment, Template
from markupsafe import Markup

from ..mail.lint import untranslated_wording
from ..mail.locales import load_catalogs
from ..mail.render import Renderer
from .preview import Preview, PreviewPage, locales_of, render_page

__all__ = ["Gallery", "build_gallery", "index_html", "page_html", "pages_by_path", "write_gallery"]

_STYLE = """
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2933;
       background: #f4f5f7; }
header, main { max-width: 1200px; margin: 0 auto; padding: 12px 16px; }
h1 { font-size: 20px; margin: 8px 0; overflow-wrap: anywhere; }
h2 { font-size: 16px; margin: 20px 0 8px; }
a { color: #0b6bcb; }
.muted { color: #52606d; font-size: 13px; }
.warnings { background: #fff7e6; border-left: 4px solid #d97706; padding: 8px 12px; margin: 12px 0; }
.warnings li, .errors li { overflow-wrap: anywhere; }
.errors { background: #fdecea; border-left: 4px solid #c62828; padding: 8px 12px; margin: 12px 0; }
ul.emails { list-style: none; padding: 0; margin: 0; }
ul.emails li { background: #fff; border: 1px solid #e1e4e8; border-radius: 4px; padding: 8px 10px; margin: 6px 0;
               display: flex; flex-wrap: wrap; gap: 4px 12px; align-items: baseline; }
ul.emails .what { font-weight: 600; min-width: 14em; overflow-wrap: anywhere; }
ul.emails .subject { flex: 1 1 18em; overflow-wrap: anywhere; }
.badge { display: inline-block; font-size: 12px; padding: 0 6px; border-radius: 8px; background: #e1e4e8; }
.badge.warn { background: #fde68a; }
nav.locales a, nav.locales strong { margin-right: 10px; }
table.headers { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid #e1e4e8; }
table.headers th { text-align: left; vertical-align: top; padding: 4px 8px; width: 8.5em; color: #52606d;
                   font-weight: normal; }
table.headers td { padding: 4px 8px; overflow-wrap: anywhere; word-break: break-word; }
.views > input { position: absolute; opacity: 0; }
.views > label { display: inline-block; padding: 6px 14px; border: 1px solid #c5ccd3; background: #fff;
                 cursor: pointer; margin: 12px 4px 8px 0; border-radius: 4px; }
.views > input:checked + label { background: #0b6bcb; color: #fff; border-color: #0b6bcb; }
.views > input:focus-visible + label { outline: 2px solid #0b6bcb; outline-offset: 2px; }
.panel { display: none; }
#view-html:checked ~ .panel-html, #view-text:checked ~ .panel-text, #view-source:checked ~ .panel-source {
  display: block; }
.frames { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.frame { max-width: 100%; }
.frame iframe { display: block; box-sizing: content-box; border: 1px solid #c5ccd3; background: #fff; height: 900px;
                max-width: 100%; }
.frame-desktop iframe { width: 720px; }
.frame-phone iframe { width: 375px; }
pre { background: #fff; border: 1px solid #e1e4e8; padding: 12px; white-space: pre-wrap; overflow-wrap: anywhere;
      word-break: break-word; font-size: 13px; margin: 0; }
"""

_BASE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{% block title %}{% endblock %}</title>
<style>{{ style }}</style>
</head>
<body>
{% block body %}{% endblock %}
</body>
</html>
"""

_INDEX = """{% extends "base" %}
{% block title %}Email previews{% endblock %}
{% block body %}
<header>
<h1>Email previews</h1>
<p class="muted">{{ source }} &middot; {{ pages|length }} email(s) &times; locale
&middot; templates: {{ templates_dir }}</p>
</header>
<main>
{% if problems %}
<section class="warnings" id="warnings">
<h2>Warnings ({{ problems|length }})</h2>
<ul>
{% for href, text in problems %}<li>{% if href %}<a href="{{ href }}">{{ text }}</a>{% else %}{{ text }}{% endif %}</li>
{% endfor %}</ul>
</section>
{% else %}
<p class="muted" id="warnings">No warnings.</p>
{% endif %}
{% for group, items in groups %}
<h2>{{ group }}</h2>
<ul class="emails">
{% for page in items %}<li class="email" data-slug="{{ page.preview.slug }}" data-locale="{{ page.locale }}">
<span class="what">{{ page.preview.email }} &middot; {{ page.preview.audience }} &middot; {{ page.locale }}</span>
<a class="subject" href="{{ page.preview.slug }}/{{ page.locale }}.html">{{ page.subject }}</a>
{% if page.warnings %}<span class="badge warn">{{ page.warnings|length }} warning(s)</span>{% endif %}
{% if page.preview.note %}<span class="badge">{{ page.preview.note }}</span>{% endif %}
</li>
{% endfor %}</ul>
{% endfor %}
</main>
{% endblock %}
"""

_PAGE = """{% extends "base" %}
{% block title %}{{ page.subject }}{% endblock %}
{% block body %}
<header>
<p><a href="../index.html">&larr; all emails</a></p>
<h1 class="subject">{{ page.subject }}</h1>
<p class="muted">{{ page.preview.group }} &middot; {{ page.preview.email }} &middot; {{ page.preview.audience }}
{% if page.preview.note %} &middot; {{ page.preview.note }}{% endif %}
&middot; recipient's locale: {{ page.preview.locale }}</p>
<nav class="locales" aria-label="Locales">{% for locale in locales %}
{% if locale == page.locale %}<strong>{{ locale }}</strong>
{% else %}<a href="{{ locale }}.html" hreflang="{{ locale }}">{{ locale }}</a>
{% endif %}{% endfor %}</nav>
</header>
<main>
{% if page.error %}<section class="errors"><p>{{ page.error }}</p></section>{% endif %}
{% if page.warnings %}<section class="warnings"><ul>
{% for w in page.warnings %}<li>{{ w }}</li>{% endfor %}
</ul></section>{% endif %}
<table class="headers">
{% for name, value in page.headers %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>
{% endfor %}</table>
{% if page.email %}
<div class="views">
<input type="radio" name="view" id="view-html" checked><label for="view-html">HTML</label>
<input type="radio" name="view" id="view-text"><label for="view-text">Text</label>
<input type="radio" name="view" id="view-source"><label for="view-source">Source</label>
<section class="panel panel-html">
<div class="frames">
<div class="frame frame-desktop"><p class="muted">Desktop, 720 px</p>
<iframe sandbox="" title="HTML at desktop width" srcdoc="{{ page.email.html }}"></iframe></div>
<div class="frame frame-phone"><p class="muted">Phone, 375 px</p>
<iframe sandbox="" title="HTML at phone width" srcdoc="{{ page.email.html }}"></iframe></div>
</div>
</section>
<section class="panel panel-text"><pre class="text">{{ page.email.text }}</pre></section>
<section class="panel panel-source">
{% if eml %}<p><a href="{{ page.locale }}.eml" download>{{ page.locale }}.eml</a></p><pre class="source">{{ eml }}</pre>
{% else %}<p class="muted">No message: it would not be sent.</p>{% endif %}
</section>
</div>
{% endif %}
</main>
{% endblock %}
"""

# The gallery's own pages, not the emails: autoescaped, so names and subjects from data stay text.
_env = Environment(loader=DictLoader({"base": _BASE, "index": _INDEX, "page": _PAGE}), autoescape=True)
_env.globals["style"] = Markup(_STYLE)  # CSS, not text: escaping would break its selectors


def _template(name: str) -> Template:
    return _env.get_template(name)


@dataclass(frozen=True)
class Gallery:
    """Every page rendered, and the warnings that concern the templates as a whole."""

    source: str
    templates_dir: str
    pages: tuple[PreviewPage, ...]
    general: tuple[str, ...]


def build_gallery(renderer: Renderer, previews: Sequence[Preview], *, mail_from: str, source: str) -> Gallery:
    """Render every preview in every locale."""
    pages = tuple(
        render_page(renderer, preview, locale, mail_from=mail_from)
        for preview in previews
        for locale in locales_of(preview)
    )
    general: list[str] = []
    try:
        general += untranslated_wording(load_catalogs(renderer.templates_dir / "locales"))
    except Exception as exc:  # the renderer loaded them already; a race with an edit is only reported
        general.append(f"cannot read the wording: {exc}")
    return Gallery(source, str(renderer.templates_dir), pages, tuple(general))


def index_html(gallery: Gallery) -> str:
    problems: list[tuple[str, str]] = [("", text) for text in gallery.general]
    # The same warning of the same email in several samples is one line, linked to its first page.
    seen: dict[tuple[str, str, str, str], list[PreviewPage]] = {}
    for page in gallery.pages:
        for warning in page.warnings:
            seen.setdefault((page.preview.email, page.preview.audience, page.locale, warning), []).append(page)
    for (email, audience, locale, warning), pages in seen.items():
        groups_named = ", ".join(dict.fromkeys(p.preview.group for p in pages))
        href = f"{pages[0].preview.slug}/{pages[0].locale}.html"
        problems.append((href, f"{email}/{audience} [{locale}]: {warning} ({groups_named})"))
    groups: dict[str, list[PreviewPage]] = {}
    for page in gallery.pages:
        groups.setdefault(page.preview.group, []).append(page)
    return str(
        _template("index").render(
            source=gallery.source,
            templates_dir=gallery.templates_dir,
            pages=gallery.pages,
            problems=problems,
            groups=list(groups.items()),
        )
    )


def page_html(page: PreviewPage) -> str:
    eml = page.eml.decode("utf-8", errors="replace") if page.eml is not None else None
    return str(_template("page").render(page=page, locales=locales_of(page.preview), eml=eml))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(tmp, path)


def write_gallery(gallery: Gallery, out_dir: Path) -> list[Path]:
    """Write ``index.html`` and, per email and locale, ``<slug>/<locale>.html`` and ``.eml``; returns the paths."""
    written = [out_dir / "index.html"]
    _write(written[0], index_html(gallery).encode("utf-8"))
    for page in gallery.pages:
        base = out_dir / page.preview.slug / page.locale
        _write(base.with_suffix(".html"), page_html(page).encode("utf-8"))
        written.append(base.with_suffix(".html"))
        if page.eml is not None:
            _write(base.with_suffix(".eml"), page.eml)
            written.append(base.with_suffix(".eml"))
    return written


def pages_by_path(gallery: Gallery) -> Iterable[tuple[str, PreviewPage]]:
    for page in gallery.pages:
        yield f"{page.preview.slug}/{page.locale}", page
