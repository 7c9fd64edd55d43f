"""`renewals preview`: every email x audience x locale as it would be sent, as files or from a loopback server."""

from __future__ import annotations

import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from email import message_from_bytes, policy
from pathlib import Path

import pytest

from worker.config.settings import PROJECT_ROOT
from worker.domain.routing import ContactRole
from worker.mail.lint import email_warnings, untranslated_wording
from worker.mail.locales import SUPPORTED_LOCALES, load_catalogs
from worker.mail.render import RenderedEmail, Renderer
from worker.ops import preview_samples as preview_module
from worker.ops.cli import main
from worker.ops.gallery import build_gallery, index_html, page_html, write_gallery
from worker.ops.preview import Preview
from worker.ops.preview_samples import Scenario, sample_previews
from worker.ops.preview_server import PreviewSource, fresh_renderer, make_server

TEMPLATES = PROJECT_ROOT / "templates" / "email"
MAIL_FROM = "Renewals <renewals@example.com>"


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(TEMPLATES)


@pytest.fixture(scope="module")
def gallery(renderer: Renderer):
    return build_gallery(renderer, sample_previews(renderer), mail_from=MAIL_FROM, source="built-in samples")


def test_the_gallery_has_every_template_audience_and_locale_for_each_sample(renderer, gallery) -> None:
    combos = {(p.preview.group, p.preview.email, p.preview.audience, p.locale) for p in gallery.pages}
    groups = {p.preview.group for p in gallery.pages}
    assert "typical" in groups and {"hostile-1", "hostile-5"} <= groups
    for group in groups:
        for template in renderer.template_names():
            for audience in ("client", "partner"):
                for locale in SUPPORTED_LOCALES:
                    assert (group, template, audience, locale) in combos


def test_the_gallery_shows_the_partner_digest_of_each_sample_in_every_locale(gallery) -> None:
    digests = [p for p in gallery.pages if p.preview.email == "digest"]

    assert {(p.preview.group, p.locale) for p in digests} >= {("typical", loc) for loc in SUPPORTED_LOCALES}
    typical = next(p for p in digests if p.preview.group == "typical" and p.locale == "de")
    assert dict(typical.headers)["To"] == "Anna Reed <anna@northwind.agency>"
    assert "acme.com" in typical.email.text


def test_a_page_shows_the_headers_as_sent_the_sandboxed_html_the_text_and_the_source(gallery) -> None:
    page = next(
        p
        for p in gallery.pages
        if (p.preview.group, p.preview.email, p.preview.audience, p.locale)
        == ("typical", "first-notice", "client", "de")
    )
    html = page_html(page)

    assert dict(page.headers)["To"] == "Jane Doe <jane@acme.com>, Bob Stone <bob@acme.com>"
    assert dict(page.headers)["Cc"] == "Anna Reed <anna@northwind.agency>"
    assert dict(page.headers)["Reply-To"] == "Olivia Grant <olivia.grant@platform.example>"
    assert dict(page.headers)["Content-Language"] == "de"
    assert html.count('<iframe sandbox=""') == 2
    assert 'href="en.html"' in html and 'href="pl.html"' in html and 'href="sv.html"' in html
    assert "Ihre Vertragsverlängerung für acme.com" in html
    assert 'href="de.eml"' in html
    parsed = message_from_bytes(page.eml, policy=policy.default)
    assert parsed["Subject"] == page.subject


def test_hostile_sample_data_stays_text_in_the_gallery_and_in_the_iframe(gallery) -> None:
    page = next(p for p in gallery.pages if p.preview.group == "hostile-1" and p.preview.audience == "client")
    html = page_html(page)

    assert "<script>" not in html
    # In srcdoc the email's own escaping is escaped once more: &amp;lt;script&amp;gt;.
    assert "&amp;lt;script&amp;gt;" in html


def test_the_index_lists_each_subject_and_the_warnings_with_links(gallery) -> None:
    index = index_html(gallery)

    assert "Your contract renewal for acme.com is coming up" in index
    assert index.count('class="email"') == len(gallery.pages)
    # The hostile samples without a partner user cannot reach a partner: listed, and linked.
    assert "not sendable: no_point_of_contact" in index
    assert 'href="hostile-4_first-notice_partner/en.html"' in index


def test_write_gallery_writes_the_index_and_each_page_and_eml(gallery, tmp_path: Path) -> None:
    written = write_gallery(gallery, tmp_path)

    assert (tmp_path / "index.html").is_file()
    assert (tmp_path / "typical_final-notice_partner" / "sv.html").is_file()
    eml = (tmp_path / "typical_final-notice_partner" / "sv.eml").read_bytes()
    assert message_from_bytes(eml, policy=policy.default)["Content-Language"] == "sv"
    assert len(written) == 1 + len(gallery.pages) + sum(1 for p in gallery.pages if p.eml is not None)


def email(subject: str = "Renewal for acme.com", html: str = "<p>Hi</p>", locale: str = "en") -> RenderedEmail:
    return RenderedEmail(subject=subject, text="Hi\n", html=html, locale=locale)


@pytest.mark.parametrize(
    ("rendered", "requested", "expected"),
    [
        (email(), "en", []),
        (email("x" * 79), "en", ["subject is 79 characters, over 78"]),
        (email(html="<p>" + "x" * 103_000 + "</p>"), "en", ["HTML is 101 kB, over 100 kB: Gmail clips it"]),
        (email(html='<img src="logo.png"><img src="a.png" alt="">'), "en", ["image without alt: logo.png"]),
        (
            email(html='<a href="http://x.example">x</a><a href="https://x.example">y</a><a href="mailto:a@b">z</a>'),
            "en",
            ["link is not https: http://x.example"],
        ),
        (email(), "fr", ["wording fell back to en: no 'fr' wording"]),
        (email(locale="de"), "de-AT", []),
    ],
)
def test_email_warnings(rendered: RenderedEmail, requested: str, expected: list[str]) -> None:
    assert email_warnings(rendered, requested_locale=requested) == expected


def test_wording_copied_from_english_is_reported(tmp_path: Path) -> None:
    locales = shutil.copytree(TEMPLATES / "locales", tmp_path / "locales")
    catalogs = load_catalogs(locales)
    assert untranslated_wording(catalogs) == []
    key, english = next((k, v) for k, v in catalogs["en"].entries.items() if isinstance(v, str) and " " in v)
    catalogs["sv"].entries[key] = english

    assert untranslated_wording(catalogs) == [f"sv: {key!r} is the English wording"]


class _ExtraKind:
    """A stand-in for a new kind of email (the partner digest), to show that adding one is one entry."""

    def previews(self, renderer: Renderer, scenario: Scenario, roles: Sequence[ContactRole]) -> Iterable[Preview]:
        for preview in preview_module.ReminderEmails().previews(renderer, scenario, roles):
            if preview.email == "first-notice" and preview.audience == "partner":
                yield Preview(**{**preview.__dict__, "slug": f"{scenario.name}_digest", "email": "digest"})


def test_a_new_kind_of_email_is_one_entry_in_gallery_emails(renderer, monkeypatch) -> None:
    monkeypatch.setattr(preview_module, "GALLERY_EMAILS", (*preview_module.GALLERY_EMAILS, _ExtraKind()))

    emails = {p.email for p in sample_previews(renderer)}

    assert "digest" in emails and "first-notice" in emails


def test_preview_of_an_events_file_shows_each_planned_reminder_when_due(tmp_path: Path, capsys) -> None:
    events = PROJECT_ROOT / "examples" / "events.jsonl"
    out = tmp_path / "gallery"

    assert main(["preview", "--out", str(out), "--events", str(events), "--at", "2026-12-20T00:00:00Z"]) == 0

    assert "wrote" in capsys.readouterr().out
    page = (out / "northwind_r-1001_first-notice" / "en.html").read_text()
    assert "due 2026-12-30 14:00 UTC" in page
    assert "Your contract renewal for acme.com is coming up" in page
    assert (out / "wisla_r-2001_first-notice" / "pl.html").is_file()


def test_preview_needs_out_or_serve(capsys) -> None:
    assert main(["preview"]) == 2


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A preview server over a copy of the templates, which a test may edit."""
    templates = shutil.copytree(TEMPLATES, tmp_path / "templates")
    source = PreviewSource(
        renderer=fresh_renderer(templates),
        previews=lambda r: sample_previews(r),
        mail_from=MAIL_FROM,
        description="built-in samples",
    )
    server = make_server(source, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host}:{port}", templates
    server.shutdown()
    server.server_close()


def test_the_server_listens_on_loopback_and_serves_index_pages_and_eml(served) -> None:
    base, _ = served
    assert base.startswith("http://127.0.0.1:")

    status, kind, body = get(f"{base}/")
    assert (status, kind) == (200, "text/html; charset=utf-8")
    assert b"Your contract renewal for acme.com is coming up" in body
    status, _, body = get(f"{base}/typical_second-notice_client/pl.html")
    assert status == 200 and b'href="de.html"' in body
    status, kind, body = get(f"{base}/typical_second-notice_client/pl.eml")
    assert (status, kind) == (200, "message/rfc822")
    assert message_from_bytes(body, policy=policy.default)["Content-Language"] == "pl"
    assert get(f"{base}/nothing/en.html")[0] == 404
    assert get(f"{base}/typical_second-notice_client/xx.html")[0] == 404
    assert get(f"{base}/../etc/passwd")[0] == 404


def test_an_edit_of_the_wording_shows_on_the_next_request(served) -> None:
    base, templates = served
    sv = templates / "locales" / "sv.yaml"
    before = get(f"{base}/typical_first-notice_client/sv.html")[2].decode()
    subject = before.split('<h1 class="subject">', 1)[1].split("</h1>", 1)[0]
    text = sv.read_text(encoding="utf-8")
    first_word = subject.split()[0]
    assert first_word in text
    sv.write_text(text.replace(first_word, "REDIGERAD", 1), encoding="utf-8")

    after = get(f"{base}/typical_first-notice_client/sv.html")[2].decode()

    assert "REDIGERAD" in after


def test_a_broken_template_is_reported_on_the_page_not_a_dead_server(served) -> None:
    base, templates = served
    (templates / "first-notice" / "client.subject.txt").write_text("{{ broken", encoding="utf-8")

    status, _, body = get(f"{base}/typical_first-notice_client/en.html")

    assert status == 200
    assert b"cannot render" in body and b"client.subject.txt" in body
    assert get(f"{base}/")[0] == 200


def test_renewals_preview_serve_prints_its_loopback_address_and_serves(tmp_path: Path) -> None:
    import subprocess
    import sys

    with subprocess.Popen(
        [sys.executable, "-m", "worker.ops.cli", "preview", "--serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=PROJECT_ROOT,
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.startswith("serving built-in samples at http://127.0.0.1:"), line
            url = line.split(" at ", 1)[1].split()[0]
            status, _, body = get(url)
            assert status == 200 and b"Email previews" in body
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.integration
def test_preview_of_one_stored_renewal_reads_redis(redis_url: str, tmp_path: Path) -> None:
    import subprocess
    import sys
    from datetime import UTC, datetime, timedelta

    from factories import client_updated, partner_updated, renewal_updated

    from worker.config.settings import load_settings
    from worker.domain.events import parse_event
    from worker.service.runtime import build_runtime

    start = (datetime.now(UTC).date() + timedelta(days=120)).isoformat()
    rt = build_runtime(load_settings(redis_url=redis_url, key_prefix="preview"))
    for raw in (partner_updated(), client_updated(locale="sv"), renewal_updated(start_date=start)):
        rt.store.apply(parse_event(raw))
    rt.close()
    out = tmp_path / "gallery"

    proc = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "preview", "--out", str(out), "--renewal", "p1", "r1"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"REDIS_URL": redis_url, "KEY_PREFIX": "preview", "PATH": ""},
        cwd=PROJECT_ROOT,
    )

    assert proc.returncode == 0, proc.stderr
    pages = sorted(p.parent.name for p in out.glob("*/sv.html"))
    assert pages == ["p1_r1_final-notice", "p1_r1_first-notice", "p1_r1_second-notice"]
    page = (out / "p1_r1_first-notice" / "sv.html").read_text()
    assert "recipient's locale: sv" in page
    assert "Jane Doe &lt;jane@acme.com&gt;" in page
    missing = subprocess.run(
        [sys.executable, "-m", "worker.ops.cli", "preview", "--out", str(out), "--renewal", "p1", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"REDIS_URL": redis_url, "KEY_PREFIX": "preview", "PATH": ""},
        cwd=PROJECT_ROOT,
    )
    assert missing.returncode == 1 and "no events received for renewal nope" in missing.stderr
