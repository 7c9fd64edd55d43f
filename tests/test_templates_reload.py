"""Templates and wording reload in a running process the way rules do: checked first, the old ones kept when bad."""

from __future__ import annotations

import logging
import shutil
import time
from datetime import date
from pathlib import Path

import pytest
from factories import client_updated, partner_updated, renewal_updated

from worker.config.settings import PROJECT_ROOT, load_settings
from worker.domain.events import parse_event
from worker.mail.reload import RendererWatcher, templates_digest
from worker.mail.render import Renderer
from worker.service.runtime import build_runtime


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    return shutil.copytree(PROJECT_ROOT / "templates" / "email", tmp_path / "email")


def subject(renderer: Renderer, template: str = "first-notice") -> str:
    return renderer.render(
        template,
        audience="client",
        locale="en",
        renewal=parse_event(renewal_updated()).data,
        client=parse_event(client_updated()).data,
        partner=parse_event(partner_updated()).data,
        partner_user=None,
        deadline=date(2027, 1, 29),
        today=date(2026, 12, 30),
    ).subject


def test_the_digest_changes_with_any_edit_addition_or_removal(templates: Path) -> None:
    first = templates_digest(templates)
    (templates / "first-notice" / "client.subject.txt").write_text("Edited {{ domain }}\n")
    edited = templates_digest(templates)
    (templates / "extra.txt").write_text("x")
    added = templates_digest(templates)
    (templates / "extra.txt").unlink()

    assert len({first, edited, added}) == 3
    assert templates_digest(templates) == edited


def test_a_valid_edit_replaces_the_renderer_in_force(templates: Path) -> None:
    watcher = RendererWatcher(templates)
    assert not watcher.maybe_reload()  # nothing changed
    (templates / "first-notice" / "client.subject.txt").write_text("Renewal ahead for {{ domain }}\n")

    assert watcher.maybe_reload()
    assert subject(watcher.renderer) == "Renewal ahead for acme.com"


def test_an_invalid_edit_is_logged_once_and_the_previous_templates_stay(templates: Path, caplog) -> None:
    watcher = RendererWatcher(templates)
    before = subject(watcher.renderer)
    (templates / "first-notice" / "client.subject.txt").write_text("{{ domain \n")

    with caplog.at_level(logging.ERROR, logger="worker.templates"):
        assert not watcher.maybe_reload()
        assert not watcher.maybe_reload()  # the same bad version: not logged again

    assert subject(watcher.renderer) == before
    assert sum("keeping the templates and wording in force" in r.message for r in caplog.records) == 1
    assert any("client.subject.txt" in r.message for r in caplog.records)


def test_broken_wording_is_refused_too(templates: Path, caplog) -> None:
    watcher = RendererWatcher(templates)
    (templates / "locales" / "de.yaml").write_text("common: [not, a, mapping\n")

    with caplog.at_level(logging.ERROR, logger="worker.templates"):
        assert not watcher.maybe_reload()

    assert any("de" in r.message for r in caplog.records)


def test_a_broken_digest_template_is_refused_too(templates: Path) -> None:
    watcher = RendererWatcher(templates)
    (templates / "digest" / "subject.txt").write_text("{{ 1 +\n")

    assert not watcher.maybe_reload()


def test_removing_a_template_the_rules_use_is_refused(templates: Path) -> None:
    watcher = RendererWatcher(templates, required=lambda: {"first-notice", "final-notice"})
    shutil.rmtree(templates / "final-notice")

    assert not watcher.maybe_reload()
    assert "final-notice" in watcher.renderer.template_names()


def test_the_runtime_picks_up_a_valid_template_edit_within_rules_reload_s(templates: Path) -> None:
    settings = load_settings(redis_url=None, templates_dir=templates, rules_reload_s=0.05)
    rt = build_runtime(settings)
    try:
        assert subject(rt.renderer).startswith("Your contract renewal")
        rt.rules()
        (templates / "first-notice" / "client.subject.txt").write_text("Heads up: {{ domain }}\n")
        (templates / "final-notice" / "client.subject.txt").write_text("{% if %}\n")  # and one broken file
        time.sleep(0.1)
        assert subject(rt.renderer).startswith("Your contract renewal")  # the whole edit is refused
        (templates / "final-notice" / "client.subject.txt").write_text("Last call: {{ domain }}\n")
        time.sleep(0.1)
        assert subject(rt.renderer) == "Heads up: acme.com"
        assert subject(rt.renderer, "final-notice") == "Last call: acme.com"
    finally:
        rt.close()
