"""What the preview gallery shows: each email as it would be sent, in every locale, from samples or real data.

An email to preview is a ``Preview``: its recipients and headers, and a way to render it in any
locale. The samples and the kinds of email shown for them are in ``preview_samples``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.header import decode_header, make_header
from email.parser import HeaderParser
from zoneinfo import ZoneInfo

from ..domain.decision import Send, reply_to
from ..domain.errors import TemplateError
from ..domain.events import Person
from ..domain.planner import renewal_deadline
from ..domain.routing import ALL_CONTACT_ROLES, ContactRole, partner_user, route
from ..domain.rules import RuleSet
from ..mail.lint import email_warnings
from ..mail.locales import SUPPORTED_LOCALES
from ..mail.message import build_message, message_id_for
from ..mail.render import Audience, RenderedEmail, Renderer
from ..state.planning import RenewalView

__all__ = ["Preview", "PreviewPage", "locales_of", "preview_of_send", "reminder_render", "render_page", "view_previews"]

RenderFn = Callable[[Renderer, str], RenderedEmail]


@dataclass(frozen=True)
class Preview:
    """One email to preview: who it goes to and how to render it in a locale."""

    slug: str  # a folder name: letters, digits, '-' and '_'
    group: str  # the scenario or renewal it belongs to
    email: str  # the kind of email (a template name, "digest", ...)
    audience: str
    locale: str  # the recipient's locale, from the data
    send: Send | None  # recipients and data; None for an email kind that routes by itself
    to: tuple[Person, ...]
    cc: tuple[Person, ...]
    reply_to: Person | None
    no_recipient_reason: str | None
    tag: str  # partner/renewal/reminder
    sent_at: datetime
    render: RenderFn = field(compare=False)
    note: str = ""


@dataclass(frozen=True)
class PreviewPage:
    """One preview rendered in one locale: the email, its message bytes, headers and warnings, or the error."""

    preview: Preview
    locale: str
    email: RenderedEmail | None
    eml: bytes | None
    headers: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]
    error: str | None = None

    @property
    def subject(self) -> str:
        return self.email.subject if self.email is not None else f"(not rendered: {self.error})"


def reminder_render(send: Send) -> RenderFn:
    def render(renderer: Renderer, locale: str) -> RenderedEmail:
        return renderer.render_send(send, locale=locale)

    return render


def preview_of_send(
    send: Send, *, slug: str, group: str, email: str, tag: str, sent_at: datetime, note: str = ""
) -> Preview:
    return Preview(
        slug=slug,
        group=group,
        email=email,
        audience=send.audience,
        locale=send.locale or "en",
        send=send,
        to=tuple(r.person for r in send.routing.to),
        cc=tuple(r.person for r in send.routing.cc),
        reply_to=reply_to(send),
        no_recipient_reason=send.routing.no_recipient_reason,
        tag=tag,
        sent_at=sent_at,
        render=reminder_render(send),
        note=note,
    )


def view_previews(
    views: Iterable[RenewalView], rules: RuleSet, *, now: datetime, roles: Sequence[ContactRole] = ALL_CONTACT_ROLES
) -> list[Preview]:
    """Each planned reminder of stored renewals, as it would be sent when due (routed with the state at ``now``)."""
    previews: list[Preview] = []
    for view in views:
        client_state = view.client
        client = client_state.client if client_state else None
        renewal = view.renewal.renewal
        if renewal is None or client is None:
            continue
        override = client_state.override if client_state else None
        plan = view.plan(rules, now)
        routing = route(client, view.partner, override, contact_roles=roles)
        audience: Audience = "client" if routing.owner == "hubspot" else "partner"
        for planned in plan.planned:
            send = Send(
                template=planned.template,
                audience=audience,
                locale=client.locale if audience == "client" else (view.partner.locale if view.partner else None),
                renewal=renewal,
                client=client,
                partner=view.partner,
                partner_user=partner_user(view.partner, override),
                routing=routing,
                deadline=renewal_deadline(renewal.start_date, rules),
                local_today=planned.due_at.astimezone(ZoneInfo(plan.timezone)).date(),
            )
            safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in f"{view.partner_id}_{view.renewal_id}")
            due = planned.due_at
            previews.append(
                preview_of_send(
                    send,
                    slug=f"{safe}_{planned.reminder_id}",
                    group=f"{view.partner_id}/{view.renewal_id}",
                    email=planned.reminder_id,
                    tag=f"{view.partner_id}/{view.renewal_id}/{planned.reminder_id}",
                    sent_at=due,
                    note=f"due {due:%Y-%m-%d %H:%M} UTC" + (" (caught up)" if planned.caught_up else ""),
                )
            )
    return previews


_SHOWN_HEADERS = (
    "From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "X-Renewal-Reminder", "Content-Language",
)  # fmt: skip


def _header_pairs(eml: bytes) -> tuple[tuple[str, str], ...]:
    """The headers a reader sees, decoded (encoded-words) and unfolded; only the head is parsed."""
    head = eml.split(b"\r\n\r\n", 1)[0].decode("utf-8")
    message = HeaderParser().parsestr(head, headersonly=True)
    pairs = []
    for name in _SHOWN_HEADERS:
        value = message.get(name)
        if value is not None:
            pairs.append((name, str(make_header(decode_header(re.sub(r"\r?\n[ \t]", " ", value))))))
    return tuple(pairs)


def render_page(renderer: Renderer, preview: Preview, locale: str, *, mail_from: str) -> PreviewPage:
    """Render one preview in one locale and build the message exactly as the delivery would."""
    try:
        email = preview.render(renderer, locale)
    except TemplateError as exc:
        return PreviewPage(preview, locale, None, None, (), (f"cannot render: {exc}",), error=str(exc))
    warnings = email_warnings(email, requested_locale=locale)
    if not preview.to:
        reason = preview.no_recipient_reason or "no recipients"
        headers = (("From", mail_from), ("To", f"(nobody: {reason}; not sent)"), ("Subject", email.subject))
        return PreviewPage(preview, locale, email, None, headers, (*warnings, f"not sendable: {reason}"))
    partner_id, renewal_id, reminder_id = [*preview.tag.split("/", 2), "", ""][:3]
    domain = mail_from.rpartition("@")[2].rstrip(">") or "example.com"
    try:
        eml = build_message(
            email,
            mail_from=mail_from,
            to=preview.to,
            cc=preview.cc,
            reply_to=preview.reply_to,
            message_id=message_id_for(partner_id, renewal_id, reminder_id, domain=domain),
            reminder_tag=preview.tag,
            sent_at=preview.sent_at,
        )
    except ValueError as exc:
        return PreviewPage(preview, locale, email, None, (), (*warnings, f"cannot build the message: {exc}"), str(exc))
    return PreviewPage(preview, locale, email, eml, _header_pairs(eml), tuple(warnings))


def locales_of(preview: Preview) -> tuple[str, ...]:
    """Every supported locale; the recipient's own is listed even when it is not supported (it falls back)."""
    return SUPPORTED_LOCALES if preview.locale in SUPPORTED_LOCALES else (preview.locale, *SUPPORTED_LOCALES)
