"""Warnings about a rendered email that mail clients would punish, and wording left untranslated (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from html.parser import HTMLParser

from .locales import DEFAULT_LOCALE, Catalog, choose_locale
from .render import RenderedEmail

__all__ = ["MAX_HTML_BYTES", "MAX_SUBJECT_CHARS", "email_warnings", "untranslated_wording"]

# RFC 5322 asks lines (so a subject) to stay within 78 characters; longer ones are cut in inboxes.
MAX_SUBJECT_CHARS = 78
# Gmail clips a message's HTML at about 102 kB and hides the rest behind "View entire message".
MAX_HTML_BYTES = 100 * 1024
_SAFE_SCHEMES = ("https://", "mailto:", "tel:", "#")


class _Scan(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.images_without_alt: list[str] = []
        self.insecure_links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "img" and "alt" not in values:
            self.images_without_alt.append(values.get("src") or "(no src)")
        if tag == "a":
            href = (values.get("href") or "").strip()
            if href and not href.lower().startswith(_SAFE_SCHEMES):
                self.insecure_links.append(href)


def email_warnings(email: RenderedEmail, *, requested_locale: str | None) -> list[str]:
    """What to fix before this email goes out; [] when nothing."""
    warnings: list[str] = []
    if requested_locale and choose_locale(requested_locale) != requested_locale.split("-")[0].split("_")[0].lower():
        warnings.append(f"wording fell back to {email.locale}: no {requested_locale!r} wording")
    if len(email.subject) > MAX_SUBJECT_CHARS:
        warnings.append(f"subject is {len(email.subject)} characters, over {MAX_SUBJECT_CHARS}")
    size = len(email.html.encode("utf-8"))
    if size > MAX_HTML_BYTES:
        warnings.append(f"HTML is {size / 1024:.0f} kB, over {MAX_HTML_BYTES // 1024} kB: Gmail clips it")
    scan = _Scan()
    scan.feed(email.html)
    scan.close()
    warnings += [f"image without alt: {src}" for src in scan.images_without_alt]
    warnings += [f"link is not https: {href}" for href in scan.insecure_links]
    return warnings


def untranslated_wording(catalogs: Mapping[str, Catalog]) -> list[str]:
    """Entries of other locales that are word for word the English one: most likely never translated.

    Entries without letters (``{amount}``) or of a single word (names, "OK") are left out.
    """
    reference = catalogs[DEFAULT_LOCALE].entries
    warnings: list[str] = []
    for locale, catalog in sorted(catalogs.items()):
        if locale == DEFAULT_LOCALE:
            continue
        for key, entry in sorted(catalog.entries.items(), key=lambda item: item[0]):
            english = reference.get(key)
            text = " ".join(entry.values()) if isinstance(entry, dict) else entry
            if entry == english and len([w for w in text.split() if any(c.isalpha() for c in w)]) > 1:
                warnings.append(f"{locale}: {key!r} is the English wording")
    return warnings
