"""Locale choice, the per-locale wording catalogs (templates/email/locales/*.yaml) and Babel formatting."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml
from babel import Locale
from babel.dates import format_date
from babel.numbers import format_currency

from ..domain.errors import TemplateError

__all__ = [
    "DEFAULT_LOCALE",
    "SUPPORTED_LOCALES",
    "Catalog",
    "catalog_problems",
    "choose_locale",
    "format_long_date",
    "format_money",
    "format_money_change",
    "load_catalogs",
]

SUPPORTED_LOCALES: tuple[str, ...] = ("en", "de", "pl", "sv")
DEFAULT_LOCALE = "en"

_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_PLURAL_CATEGORIES = frozenset({"zero", "one", "two", "few", "many", "other"})


def choose_locale(requested: str | None) -> str:
    """The supported locale for a requested tag: ``de-AT`` and ``de_AT`` give ``de``; anything else ``en``."""
    if not requested:
        return DEFAULT_LOCALE
    language = re.split(r"[-_]", requested.strip(), maxsplit=1)[0].lower()
    return language if language in SUPPORTED_LOCALES else DEFAULT_LOCALE


@cache
def _babel_locale(locale: str) -> Locale:
    return Locale.parse(locale)


# Formatting with Babel costs ~0.1 ms per amount and a reminder shows about ten; amounts and
# dates repeat a lot (list prices, deadlines), so the results are cached.
@lru_cache(maxsize=8192)
def format_long_date(value: date, locale: str) -> str:
    return format_date(value, format="long", locale=_babel_locale(locale))


@lru_cache(maxsize=8192)
def format_money(amount: Decimal, currency: str, locale: str) -> str:
    return format_currency(amount, currency, locale=_babel_locale(locale))


def format_money_change(amount: Decimal, currency: str, locale: str) -> str:
    """A signed difference: Babel writes the minus sign, the plus sign is added for increases."""
    text = format_money(amount, currency, locale)
    if amount > 0:
        plus_sign: str = _babel_locale(locale).number_symbols["latn"]["plusSign"]
        return plus_sign + text
    return text


def _is_plural(value: Mapping[Any, Any]) -> bool:
    return "other" in value and set(value) <= _PLURAL_CATEGORIES and all(isinstance(v, str) for v in value.values())


class Catalog:
    """The wording of one locale. Entries are plain text with ``{placeholder}`` slots, or plural forms.

    Values are substituted in one pass, so text that comes from an event is never read as a
    placeholder or as template code.
    """

    def __init__(self, locale: str, entries: dict[str, str | dict[str, str]], source: str) -> None:
        self.locale = locale
        self.entries = entries
        self.source = source
        self._plural_form = _babel_locale(locale).plural_form

    def text(self, key: str, /, **values: object) -> str:
        entry = self.entries.get(key)
        if entry is None:
            raise TemplateError(f"{self.source}: no wording for {key!r}")
        if isinstance(entry, dict):
            count = values.get("count")
            if not isinstance(count, int):
                raise TemplateError(f"{self.source}: {key!r} has plural forms and needs an integer count=")
            entry = entry.get(self._plural_form(abs(count)), entry["other"])

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise TemplateError(f"{self.source}: {key!r} uses {{{name}}}, which is not given here")
            return str(values[name])

        return _PLACEHOLDER.sub(substitute, entry)

    def plural_categories(self) -> frozenset[str]:
        return self._plural_form.tags | {"other"}


def _flatten(tree: Mapping[Any, Any], source: str, prefix: str = "") -> dict[str, str | dict[str, str]]:
    entries: dict[str, str | dict[str, str]] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, str):
            entries[path] = value
        elif isinstance(value, Mapping) and _is_plural(value):
            entries[path] = dict(value)
        elif isinstance(value, Mapping):
            entries.update(_flatten(value, source, f"{path}."))
        else:
            raise TemplateError(f"{source}: {path} must be text, plural forms or a group, not {value!r}")
    return entries


def load_catalogs(locales_dir: Path) -> dict[str, Catalog]:
    """One catalog per supported locale, read from ``<locale>.yaml``; any problem is a TemplateError."""
    catalogs: dict[str, Catalog] = {}
    for locale in SUPPORTED_LOCALES:
        path = locales_dir / f"{locale}.yaml"
        try:
            tree = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise TemplateError(f"cannot read the {locale} wording from {path}: {exc}") from None
        if not isinstance(tree, Mapping):
            raise TemplateError(f"{path}: expected a mapping of wording keys")
        catalogs[locale] = Catalog(locale, _flatten(tree, path.name), path.name)
    return catalogs


def catalog_problems(catalogs: Mapping[str, Catalog]) -> list[str]:
    """Keys missing from or unknown to a locale (English is the reference) and incomplete plural forms."""
    problems: list[str] = []
    reference = catalogs[DEFAULT_LOCALE].entries
    for locale, catalog in catalogs.items():
        for key in sorted(reference.keys() - catalog.entries.keys()):
            problems.append(f"{catalog.source}: {key!r} is missing")
        for key in sorted(catalog.entries.keys() - reference.keys()):
            problems.append(f"{catalog.source}: {key!r} is not in {catalogs[DEFAULT_LOCALE].source}")
        needed = catalog.plural_categories()
        for key, entry in catalog.entries.items():
            if isinstance(entry, dict) and needed - entry.keys():
                missing = ", ".join(sorted(needed - entry.keys()))
                problems.append(f"{catalog.source}: {key!r} needs the plural forms {missing} for {locale}")
    return problems
