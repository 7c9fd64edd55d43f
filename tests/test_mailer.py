"""The mailer against a real SMTP server on loopback, and the outbox folder."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from collections.abc import Awaitable, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import TypeVar

import pytest
from smtp_fixtures import PASSWORD, SmtpServer

from worker.config.settings import Settings
from worker.domain.errors import ConfigError, PermanentSendError, TransientSendError
from worker.mail.mailer import SendResult, SmtpPool, build_mailer
from worker.mail.outbox import OutboxMailer

T = TypeVar("T")

SENDER = "renewals@example.com"
TO = "client@example.com"
CC = "partner@example.com"


def make_message(message_id: str = "<renewal-1@example.com>", body: str = "Your contract renews soon.\n") -> bytes:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = TO
    message["Subject"] = "Renewal reminder"
    message["Message-ID"] = message_id
    message.set_content(body)
    return message.as_bytes(policy=email.policy.SMTP)


def with_pool(settings: Settings, scenario: Callable[[SmtpPool], Awaitable[T]]) -> T:
    """Runs ``scenario`` on a fresh pool in its own event loop, closing the pool whatever happens."""

    async def main() -> T:
        pool = SmtpPool(settings)
        try:
            return await scenario(pool)
        finally:
            await pool.close()

    return asyncio.run(main())


def send_one(settings: Settings, recipients: list[str] | None = None, message: bytes | None = None) -> SendResult:
    async def scenario(pool: SmtpPool) -> SendResult:
        return await pool.send(
            sender=SENDER,
            recipients=[TO] if recipients is None else recipients,
            message=make_message() if message is None else message,
        )

    return with_pool(settings, scenario)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield int(sock.getsockname()[1])


@pytest.mark.integration
def test_a_message_arrives_with_its_envelope_and_exact_bytes(smtp_server: SmtpServer) -> None:
    message = make_message()

    result = send_one(smtp_server.make_settings(), recipients=[TO, CC], message=message)

    assert result == SendResult(reply="250 2.0.0 Ok: queued as 1", refused={})
    [received] = smtp_server.messages
    assert (received.mail_from, received.rcpt_tos, received.content) == (SENDER, (TO, CC), message)
    assert not received.encrypted


@pytest.mark.integration
def test_a_display_name_in_the_sender_stays_out_of_the_envelope(smtp_server: SmtpServer) -> None:
    async def scenario(pool: SmtpPool) -> SendResult:
        return await pool.send(sender=f"Renewals <{SENDER}>", recipients=[TO], message=make_message())

    with_pool(smtp_server.make_settings(), scenario)

    assert smtp_server.messages[0].mail_from == SENDER


@pytest.mark.integration
def test_sequential_messages_reuse_one_connection(smtp_server: SmtpServer) -> None:
    async def scenario(pool: SmtpPool) -> None:
        for n in range(5):
            await pool.send(sender=SENDER, recipients=[TO], message=make_message(f"<m{n}@example.com>"))

    with_pool(smtp_server.make_settings(smtp_pool_size=4), scenario)

    assert len(smtp_server.messages) == 5
    assert smtp_server.connections == 1


@pytest.mark.integration
def test_concurrent_sends_open_at_most_pool_size_connections(smtp_server: SmtpServer) -> None:
    async def scenario(pool: SmtpPool) -> None:
        await asyncio.gather(
            *(pool.send(sender=SENDER, recipients=[TO], message=make_message(f"<m{n}@example.com>")) for n in range(12))
        )

    with_pool(smtp_server.make_settings(smtp_pool_size=3), scenario)

    assert len(smtp_server.messages) == 12
    assert 1 <= smtp_server.connections <= 3


@pytest.mark.integration
def test_close_quits_every_connection(smtp_server: SmtpServer) -> None:
    async def scenario(pool: SmtpPool) -> None:
        await asyncio.gather(
            *(pool.send(sender=SENDER, recipients=[TO], message=make_message(f"<m{n}@example.com>")) for n in range(4))
        )

    with_pool(smtp_server.make_settings(smtp_pool_size=2), scenario)

    assert smtp_server.quits == smtp_server.connections > 0


@pytest.mark.integration
def test_a_closed_pool_refuses_to_send_and_closes_again_harmlessly(smtp_server: SmtpServer) -> None:
    async def scenario() -> None:
        pool = SmtpPool(smtp_server.make_settings())
        await pool.send(sender=SENDER, recipients=[TO], message=make_message())
        await pool.close()
        await pool.close()
        await pool.send(sender=SENDER, recipients=[TO], message=make_message())

    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(scenario())


@pytest.mark.integration
@pytest.mark.parametrize(
    ("stage", "reply", "error", "code"),
    [
        ("MAIL", "451 4.3.0 Try again later", TransientSendError, 451),
        ("RCPT", "450 4.2.1 Mailbox busy", TransientSendError, 450),
        ("DATA", "452 4.3.1 Insufficient storage", TransientSendError, 452),
        ("MAIL", "553 5.7.1 Sender not allowed", PermanentSendError, 553),
        ("DATA", "554 5.7.1 Message rejected as spam", PermanentSendError, 554),
    ],
)
def test_server_replies_become_errors_that_say_whether_to_retry_and_keep_the_code(
    smtp_server: SmtpServer, stage: str, reply: str, error: type[Exception], code: int
) -> None:
    smtp_server.reply_next(reply, at=stage)  # type: ignore[arg-type]

    with pytest.raises(error) as raised:
        send_one(smtp_server.make_settings())

    assert raised.value.code == code  # type: ignore[attr-defined]
    assert reply in str(raised.value)
    assert smtp_server.messages == []


@pytest.mark.integration
def test_every_recipient_refused_with_5xx_raises_permanent_send_error_naming_them(smtp_server: SmtpServer) -> None:
    smtp_server.refuse(TO)
    smtp_server.refuse(CC, "550 5.1.1 Gone away")

    with pytest.raises(PermanentSendError) as raised:
        send_one(smtp_server.make_settings(), recipients=[TO, CC])

    assert (raised.value.code, raised.value.recipients) == (550, (TO, CC))
    assert "Gone away" in str(raised.value)
    assert smtp_server.messages == []


@pytest.mark.integration
def test_some_recipients_refused_with_5xx_is_a_success_that_lists_them(smtp_server: SmtpServer) -> None:
    smtp_server.refuse(CC)

    result = send_one(smtp_server.make_settings(), recipients=[TO, CC])

    assert result.refused == {CC: "550 5.1.1 No such user"}
    assert smtp_server.messages[0].rcpt_tos == (TO,)


@pytest.mark.integration
def test_a_4xx_for_one_recipient_defers_the_whole_message_so_a_retry_cannot_duplicate(
    smtp_server: SmtpServer,
) -> None:
    smtp_server.refuse(CC, "451 4.7.1 Greylisted, come back later")

    with pytest.raises(TransientSendError) as raised:
        send_one(smtp_server.make_settings(), recipients=[TO, CC])

    assert raised.value.code == 451
    assert smtp_server.messages == []


@pytest.mark.integration
@pytest.mark.parametrize("fails_at", ["RCPT", "DATA"])
def test_a_connection_carries_the_next_message_after_a_failed_transaction(
    smtp_server: SmtpServer, fails_at: str
) -> None:
    # Refused at RCPT, the server still holds the sender: only RSET lets the next MAIL through.
    if fails_at == "RCPT":
        smtp_server.refuse(TO)
    else:
        smtp_server.reply_next("554 5.7.1 Rejected", at="DATA")

    async def scenario(pool: SmtpPool) -> SendResult:
        with pytest.raises(PermanentSendError):
            await pool.send(sender=SENDER, recipients=[TO], message=make_message("<first@example.com>"))
        return await pool.send(sender=SENDER, recipients=[CC], message=make_message("<second@example.com>"))

    with_pool(smtp_server.make_settings(), scenario)

    assert [m.rcpt_tos for m in smtp_server.messages] == [(CC,)]
    assert smtp_server.connections == 1


@pytest.mark.integration
@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA"])
def test_a_dropped_connection_is_replaced_and_the_message_arrives_once(smtp_server: SmtpServer, stage: str) -> None:
    smtp_server.drop_next(at=stage)  # type: ignore[arg-type]

    send_one(smtp_server.make_settings())

    assert len(smtp_server.messages) == 1
    assert smtp_server.connections == 2


@pytest.mark.integration
def test_an_idle_connection_closed_by_the_server_is_replaced(smtp_server: SmtpServer) -> None:
    async def scenario(pool: SmtpPool) -> None:
        await pool.send(sender=SENDER, recipients=[TO], message=make_message("<first@example.com>"))
        await asyncio.to_thread(smtp_server.close_connections)
        await pool.send(sender=SENDER, recipients=[TO], message=make_message("<second@example.com>"))

    with_pool(smtp_server.make_settings(smtp_pool_size=1), scenario)

    assert len(smtp_server.messages) == 2
    assert smtp_server.connections == 2


@pytest.mark.integration
def test_a_connection_dropped_again_after_reconnecting_raises_transient_send_error(smtp_server: SmtpServer) -> None:
    smtp_server.drop_next(at="MAIL", messages=2)

    with pytest.raises(TransientSendError, match="lost twice"):
        send_one(smtp_server.make_settings())

    assert smtp_server.messages == []


@pytest.mark.integration
def test_a_refused_connection_raises_transient_send_error(closed_port: int) -> None:
    settings = Settings(smtp_host="127.0.0.1", smtp_port=closed_port, smtp_security="none", smtp_timeout_s=2)

    with pytest.raises(TransientSendError, match="cannot connect"):
        send_one(settings)


@pytest.mark.integration
def test_a_server_that_never_greets_times_out_as_transient_send_error(silent_port: int) -> None:
    settings = Settings(smtp_host="127.0.0.1", smtp_port=silent_port, smtp_security="none", smtp_timeout_s=0.2)

    with pytest.raises(TransientSendError, match="cannot connect"):
        send_one(settings)


@pytest.mark.integration
def test_starttls_with_the_test_ca_delivers_over_an_encrypted_connection(smtp_server_starttls: SmtpServer) -> None:
    send_one(smtp_server_starttls.make_settings())

    [received] = smtp_server_starttls.messages
    assert received.encrypted


@pytest.mark.integration
def test_starttls_against_a_server_without_it_fails_instead_of_sending_in_plaintext(
    smtp_server: SmtpServer,
) -> None:
    with pytest.raises(ConfigError, match="STARTTLS"):
        send_one(smtp_server.make_settings(smtp_security="starttls"))

    assert smtp_server.messages == []


@pytest.mark.integration
def test_starttls_with_a_certificate_from_an_untrusted_ca_fails(smtp_server_starttls: SmtpServer) -> None:
    with pytest.raises(ConfigError, match="TLS failed"):
        send_one(smtp_server_starttls.make_settings(smtp_ca_file=None))

    assert smtp_server_starttls.messages == []


@pytest.mark.integration
def test_security_none_never_upgrades_even_when_starttls_is_offered(smtp_server_starttls: SmtpServer) -> None:
    send_one(smtp_server_starttls.make_settings(smtp_security="none", smtp_ca_file=None))

    assert not smtp_server_starttls.messages[0].encrypted


@pytest.mark.integration
def test_credentials_are_sent_only_after_starttls(smtp_server_auth: SmtpServer) -> None:
    send_one(smtp_server_auth.make_settings())

    assert smtp_server_auth.login_attempts == [True]
    assert len(smtp_server_auth.messages) == 1


@pytest.mark.integration
def test_credentials_are_never_sent_over_plaintext_even_when_settings_skipped_validation(
    smtp_server_auth: SmtpServer,
) -> None:
    unchecked = Settings.model_construct(**{**smtp_server_auth.make_settings().model_dump(), "smtp_security": "none"})

    with pytest.raises(ConfigError, match="unencrypted"):
        send_one(unchecked)

    assert smtp_server_auth.login_attempts == []
    assert smtp_server_auth.messages == []


@pytest.mark.integration
def test_a_wrong_password_is_a_config_error_naming_the_settings_not_a_refused_message(
    smtp_server_auth: SmtpServer,
) -> None:
    with pytest.raises(ConfigError, match=r"535.*SMTP_PASSWORD") as raised:
        send_one(smtp_server_auth.make_settings(smtp_password=PASSWORD + "?"))

    assert not isinstance(raised.value, PermanentSendError)  # the delivery retries it, it does not fail it
    assert smtp_server_auth.messages == []


@pytest.mark.parametrize(
    "recipients",
    [[], "client@example.com", [""], ["client@example.com, other@example.com"], ["client@example.com\r\nDATA"]],
)
def test_a_bad_envelope_is_rejected_before_any_connection_is_made(closed_port: int, recipients: list[str]) -> None:
    settings = Settings(smtp_host="127.0.0.1", smtp_port=closed_port, smtp_security="none")

    with pytest.raises(ValueError):
        send_one(settings, recipients=recipients)


def test_the_outbox_writes_a_parseable_eml_named_after_the_message_id(tmp_path: Path) -> None:
    message = make_message("<renewal-42@example.com>")

    result = asyncio.run(OutboxMailer(tmp_path / "outbox").send(sender=SENDER, recipients=[TO], message=message))

    path = tmp_path / "outbox" / "renewal-42@example.com.eml"
    assert result.reply == f"250 written to {path}"
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    assert (parsed["Message-ID"], parsed["To"]) == ("<renewal-42@example.com>", TO)
    assert list((tmp_path / "outbox").iterdir()) == [path]


def test_the_outbox_overwrites_rather_than_duplicates_on_resend(tmp_path: Path) -> None:
    mailer = OutboxMailer(tmp_path)

    async def send_twice() -> None:
        await mailer.send(sender=SENDER, recipients=[TO], message=make_message(body="first\n"))
        await mailer.send(sender=SENDER, recipients=[TO], message=make_message(body="second\n"))

    asyncio.run(send_twice())

    [path] = tmp_path.iterdir()
    assert b"second" in path.read_bytes()


@pytest.mark.parametrize(
    ("message_id", "other_id"),
    [("<../../etc/passwd@x>", "<.._.._etc_passwd@x>"), ("<a/b@x>", "<a_b@x>"), ("<.hidden@x>", "<hidden@x>")],
)
def test_the_outbox_keeps_hostile_message_ids_inside_the_folder_and_apart(
    tmp_path: Path, message_id: str, other_id: str
) -> None:
    mailer = OutboxMailer(tmp_path / "outbox")

    async def send_both() -> None:
        for mid in (message_id, other_id):
            await mailer.send(sender=SENDER, recipients=[TO], message=make_message(mid))

    asyncio.run(send_both())

    names = sorted(p.name for p in (tmp_path / "outbox").iterdir())
    assert len(names) == 2
    assert all(name.endswith(".eml") and not name.startswith(".") for name in names)
    assert list(tmp_path.iterdir()) == [tmp_path / "outbox"]


def test_build_mailer_uses_smtp_when_a_host_is_set_and_the_outbox_otherwise(tmp_path: Path) -> None:
    assert isinstance(build_mailer(Settings(smtp_host="mail.example.com")), SmtpPool)
    assert isinstance(build_mailer(Settings(smtp_host=None, outbox_dir=tmp_path)), OutboxMailer)


@pytest.mark.parametrize(
    "address",
    [
        "client@example.com",
        "jürgen@bücher.de",
        "first.last+tag@sub.example.co.uk",
        "Client Name <client@example.com>",
        '"quoted local"@example.com',
        "client@[192.0.2.1]",
    ],
)
def test_the_mailbox_on_mail_and_rcpt_is_what_aiosmtplib_would_send(address: str) -> None:
    # The fast path skips parseaddr for a bare addr-spec; anything else goes through aiosmtplib's own parser.
    from aiosmtplib.email import parse_address

    from worker.mail.mailer import _mailbox

    assert _mailbox(address) == parse_address(address)


@pytest.mark.parametrize("address", ["a@b.example\r\nRSET", "a b@example.com", "a@b.example>", "<a@b.example> SIZE=1"])
def test_an_address_that_could_inject_smtp_never_takes_the_fast_path(closed_port: int, address: str) -> None:
    settings = Settings(smtp_host="127.0.0.1", smtp_port=closed_port, smtp_security="none")

    with pytest.raises(ValueError):
        send_one(settings, recipients=[address])


@pytest.mark.integration
def test_a_check_that_fails_or_says_no_before_mail_from_keeps_the_connection_and_sends_nothing(
    smtp_server: SmtpServer,
) -> None:
    from worker.mail.transport import Envelope

    class RedisAway(Exception):
        pass

    async def fail() -> Envelope | None:
        raise RedisAway("the pre-send read failed")

    async def say_no() -> Envelope | None:
        return None

    async def say_yes() -> Envelope | None:
        return Envelope(SENDER, [TO], make_message())

    async def scenario(pool: SmtpPool) -> list[object]:
        accepted: list[SendResult] = []
        await pool.send(sender=SENDER, recipients=[TO], message=make_message("<warm@example.com>"))
        with pytest.raises(RedisAway):
            await pool.send_checked(fail, accepted=accepted.append)
        skipped = await pool.send_checked(say_no, accepted=accepted.append)
        sent = await pool.send_checked(say_yes, accepted=accepted.append)
        return [skipped, sent, accepted]

    skipped, sent, accepted = with_pool(smtp_server.make_settings(smtp_pool_size=1), scenario)

    assert skipped is None
    assert isinstance(sent, SendResult) and accepted == [sent]
    assert len(smtp_server.messages) == 2
    assert smtp_server.connections == 1  # the failed check did not cost the connection
