"""The event contract, version 1: strict pydantic models that every incoming event must pass."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Any, Literal

import email_validator
from email_validator import EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
)
from pydantic_core import to_json

from .errors import InvalidEvent

__all__ = [
    "CONTRACT_VERSION",
    "EVENT_TYPES",
    "TRUSTED",
    "ClientData",
    "ClientOwnerChanged",
    "ClientServicesEnded",
    "ClientUpdated",
    "Contacts",
    "Event",
    "Owner",
    "OwnerData",
    "PartnerData",
    "PartnerUpdated",
    "Person",
    "Product",
    "RenewalData",
    "RenewalRemoved",
    "RenewalRemovedData",
    "RenewalStatus",
    "RenewalUpdated",
    "ServicesEndedData",
    "event_json_schema",
    "parse_event",
    "parse_event_json",
]

CONTRACT_VERSION = 1

Owner = Literal["hubspot", "partner"]
RenewalStatus = Literal["pending", "renewed", "confirmed", "cancellation_requested"]


# Exactly Unicode's Cc category: C0 controls, DEL and C1 controls.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _no_control_chars(value: str) -> str:
    # CR, LF and NUL would let a value break out of an email header or a Redis key; no
    # legitimate name or id carries any control character, so all of them are refused.
    found = _CONTROL.search(value)
    if found:
        raise ValueError(f"must not contain control characters (found {found.group()!r})")
    return value


TRUSTED = {"trusted": True}


def _email(value: str, info: ValidationInfo) -> str:
    # Records read back from the store were checked on the way in; re-checking every address on
    # every read would dominate planning time.
    if info.context is TRUSTED:
        return value
    return _normalized_email(value)


# RFC 5322 dot-atom of plain ASCII: email-validator accepts such a local part as it is.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_ASCII_HOST = re.compile(r"[A-Za-z0-9.-]+")
_EMAIL_MAX_LENGTH = 254
# Local parts that email-validator lowercases (RFC 2142); left to the full check.
_CASE_INSENSITIVE_MAILBOXES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


@lru_cache(maxsize=65_536)
def _normalized_email(value: str) -> str:
    # The same few addresses (renewal managers, partner users) recur in most events, hence the
    # cache. Checking the domain is most of email-validator's cost (Unicode tables in pure
    # Python), and each client brings a new one: a plain ASCII address is checked here as a plain
    # local part and a plain domain, which email-validator returns unchanged (tests/test_events.py
    # holds this to email-validator's own answer); anything else goes to email-validator.
    local, at, host = value.partition("@")
    if (
        at
        and len(value) <= _EMAIL_MAX_LENGTH
        and _PLAIN_LOCAL.fullmatch(local)
        and _ASCII_HOST.fullmatch(host)
        and local.lower() not in _CASE_INSENSITIVE_MAILBOXES
    ):
        domain = host if _is_plain_host(host) else _checked_ascii_domain(host)
        if domain is not None:
            return f"{local}@{domain}"
    return _checked_email(value)


# Lowercase letters, digits and inner hyphens, labels of at most 63, a top-level label that ends
# in a letter: what email-validator returns unchanged. "--" anywhere is left to it (Punycode).
_PLAIN_HOST = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+(?:[a-z0-9][a-z0-9-]{0,61})?[a-z]")
_DOMAIN_MAX_LENGTH = 253


def _is_plain_host(host: str) -> bool:
    """A common domain that needs none of email-validator's Unicode work; each one is new per client."""
    if len(host) > _DOMAIN_MAX_LENGTH or "--" in host or not _PLAIN_HOST.fullmatch(host):
        return False
    # Read at each call: email-validator documents this list as the one to change.
    return not _special_use(tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES)).search(host)


@lru_cache(maxsize=4)
def _special_use(names: tuple[str, ...]) -> re.Pattern[str]:
    """Matches a domain that is one of ``names`` or inside one."""
    return re.compile(r"(?:^|\.)(?:" + "|".join(re.escape(name) for name in names) + r")\Z")


@lru_cache(maxsize=16_384)
def _checked_ascii_domain(host: str) -> str | None:
    """The normalized domain when it stays plain ASCII (no Punycode), else None for the full check."""
    try:
        checked = validate_email(f"a@{host}", check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError:
        return None
    domain = str(checked.domain)
    return domain if domain == host.lower() else None


def _checked_email(value: str) -> str:
    try:
        checked = validate_email(value, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as exc:
        host = value.rpartition("@")[2].lower().rstrip(".")
        names = tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES)
        if host and _special_use(names).search(host):
            raise ValueError(
                f"not a valid email address: {host} is a reserved domain (.{', .'.join(names)}) where no mail can "
                "be delivered, so the contract refuses it; test data can use example.com, example.org or example.net"
            ) from None
        raise ValueError(f"not a valid email address: {exc}") from None
    return str(checked.normalized)


@lru_cache(maxsize=1)
def _known_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _timezone(value: str) -> str:
    if value not in _known_zones():
        raise ValueError(f"unknown IANA time zone {value!r}")
    return value


_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _domain(value: str, info: ValidationInfo) -> str:
    # As for addresses: a record read back from the store was checked on the way in, and the IDNA
    # check is most of the cost of reading a client (a digest reads thousands).
    if info.context is TRUSTED:
        return value
    host = value.strip().lower().rstrip(".")
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"not a valid domain name: {value!r}") from None
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or len(labels) < 2 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        raise ValueError(f"not a valid domain name: {value!r}")
    return host


@lru_cache(maxsize=1)
def _known_currencies() -> frozenset[str]:
    from babel.numbers import list_currencies

    return frozenset(list_currencies())


def _currency(value: str) -> str:
    if value not in _known_currencies():
        raise ValueError(f"not an ISO 4217 currency code: {value!r}")
    return value


_DECIMAL_TEXT = re.compile(r"^-?\d{1,15}(\.\d{1,6})?$")


def _decimal_text(value: Any) -> Decimal:
    # Money travels as a JSON string so that no producer ever rounds it through a binary float.
    if isinstance(value, Decimal):
        return value
    if not isinstance(value, str) or not _DECIMAL_TEXT.match(value):
        raise ValueError('must be a decimal number written as a string, such as "1250.00"')
    return Decimal(value)


Id = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_control_chars)]
Name = Annotated[str, Field(min_length=1, max_length=300), AfterValidator(_no_control_chars)]
Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]
TimeZone = Annotated[str, AfterValidator(_timezone)]
Locale = Annotated[str, Field(pattern=r"^[a-z]{2,3}([-_][A-Za-z0-9]{2,8})?$")]
Domain = Annotated[
    str,
    Field(min_length=1, max_length=253),
    AfterValidator(_no_control_chars),
    AfterValidator(_domain),
]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$"), AfterValidator(_currency)]
Money = Annotated[
    Decimal,
    BeforeValidator(_decimal_text),
    WithJsonSchema({"type": "string", "pattern": _DECIMAL_TEXT.pattern, "examples": ["1250.00"]}),
]


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Person(_Model):
    name: Name
    email: Email


class Contacts(_Model):
    primary: Person | None = None
    billing: Person | None = None
    decision_maker: Person | None = None


class PartnerData(_Model):
    name: Name
    default_owner: Owner = "hubspot"
    notify_user: Person | None = None
    locale: Locale = "en"
    timezone: TimeZone = "UTC"


class ClientData(_Model):
    client_id: Id
    domain: Domain
    name: Name | None = None
    locale: Locale
    timezone: TimeZone | None = None
    contacts: Contacts


class OwnerData(_Model):
    client_id: Id
    owner: Owner | None
    notify_user: Person | None = None


class ServicesEndedData(_Model):
    client_id: Id


class Product(_Model):
    name: Name
    current_mrr: Money
    renewal_mrr: Money


def _plausible_start(value: date) -> date:
    # The deadline and reminder arithmetic subtracts and adds months of days; years near 1 or
    # 9999 would overflow it, and no contract term starts there.
    if not 2000 <= value.year <= 2999:
        raise ValueError("must be a date between the years 2000 and 2999")
    return value


class RenewalData(_Model):
    renewal_id: Id
    client_id: Id
    start_date: Annotated[date, AfterValidator(_plausible_start)]
    products: list[Product] = Field(min_length=1)
    currency: Currency
    current_mrr: Money
    renewal_mrr: Money
    status: RenewalStatus = "pending"
    renewal_manager: Person | None = None


class RenewalRemovedData(_Model):
    renewal_id: Id


class _Envelope(_Model):
    event_id: Id
    occurred_at: AwareDatetime
    partner_id: Id


class PartnerUpdated(_Envelope):
    type: Literal["partner.updated"]
    data: PartnerData


class ClientUpdated(_Envelope):
    type: Literal["client.updated"]
    data: ClientData


class ClientOwnerChanged(_Envelope):
    type: Literal["client.owner_changed"]
    data: OwnerData


class ClientServicesEnded(_Envelope):
    type: Literal["client.services_ended"]
    data: ServicesEndedData


class RenewalUpdated(_Envelope):
    type: Literal["renewal.updated"]
    data: RenewalData


class RenewalRemoved(_Envelope):
    type: Literal["renewal.removed"]
    data: RenewalRemovedData


Event = Annotated[
    PartnerUpdated | ClientUpdated | ClientOwnerChanged | ClientServicesEnded | RenewalUpdated | RenewalRemoved,
    Field(discriminator="type"),
]
EVENT_TYPES = (
    "partner.updated",
    "client.updated",
    "client.owner_changed",
    "client.services_ended",
    "renewal.updated",
    "renewal.removed",
)

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def _field_path(loc: tuple[int | str, ...]) -> str:
    # The discriminated union puts the tag into the location ("renewal.updated"); a reader
    # wants the path inside the event, so the tag is dropped.
    parts = [str(p) for p in loc if str(p) not in EVENT_TYPES]
    return ".".join(parts)


def _message(err: Any) -> str:
    if err["type"] == "union_tag_invalid":
        return f"unknown event type; expected one of {', '.join(EVENT_TYPES)}"
    if err["type"] == "union_tag_not_found":
        return "field required (one of " + ", ".join(EVENT_TYPES) + ")"
    msg = str(err["msg"])
    return msg.removeprefix("Value error, ")


def parse_event(raw: str | bytes | dict[str, Any]) -> Event:
    """Validate one event, raising InvalidEvent with one entry per bad field."""
    return parse_event_json(raw)[0]


def parse_event_json(raw: str | bytes | Mapping[str, Any]) -> tuple[Event, str]:
    """Validate one event and return it with the JSON text it was read from.

    Producers put that text on the queue as it is: serializing the parsed model again would
    cost as much as reading it, and the worker validates (and normalizes) it anyway.
    """
    try:
        if isinstance(raw, Mapping):
            # pydantic's serializer, several times faster than json.dumps, writes Decimal, date and
            # datetime values as strings; floats stay floats (and money as a float is refused).
            text = to_json(raw if isinstance(raw, dict) else dict(raw)).decode()
        elif isinstance(raw, bytes):
            text = raw.decode("utf-8")
        else:
            text = raw
        return _EVENT_ADAPTER.validate_json(text), text
    except ValidationError as exc:
        errors = []
        for err in exc.errors(include_url=False):
            path = _field_path(err["loc"])
            if err["type"] in ("union_tag_not_found", "union_tag_invalid"):
                path = "type"
            errors.append((path, _message(err)))
        raise InvalidEvent(errors) from None
    except (TypeError, ValueError) as exc:
        raise InvalidEvent([("", f"not a JSON object: {exc}")]) from None


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one event, for producers to validate before sending."""
    schema = _EVENT_ADAPTER.json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"renewal-worker event, contract version {CONTRACT_VERSION}"
    return schema
