"""Settings read once from the environment; a bad value stops start-up naming the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from email.utils import getaddresses
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from email_validator import EmailNotValidError, validate_email
from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from ..domain.errors import ConfigError
from ..domain.routing import ContactRole

__all__ = [
    "BUNDLED_ROOT",
    "PROJECT_ROOT",
    "ContactRole",
    "Settings",
    "check_mail_from",
    "default_data_path",
    "load_settings",
]

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
# The repository's top folder when running from a checkout (site-packages when installed from a wheel).
PROJECT_ROOT = _PACKAGE_DIR.parent
# Copies of rules/, templates/ and examples/ that the wheel carries (pyproject.toml maps them).
BUNDLED_ROOT = _PACKAGE_DIR / "bundled"


def default_data_path(*parts: str) -> Path:
    """The repository's own file when run from a checkout, else the copy packaged in the wheel."""
    in_checkout = PROJECT_ROOT.joinpath(*parts)
    if (PROJECT_ROOT / "pyproject.toml").is_file() and in_checkout.exists():
        return in_checkout
    return BUNDLED_ROOT.joinpath(*parts)


class Settings(BaseSettings):
    """Every knob of the worker. Without any variable set, the embedded default runs."""

    model_config = SettingsConfigDict(
        env_prefix="",
        extra="ignore",
        frozen=True,
        case_sensitive=False,
        env_ignore_empty=True,
    )

    redis_url: str | None = Field(
        default=None,
        description="Redis URL (redis://host:6379/0). Unset: in-process broker and store.",
    )
    key_prefix: str = Field(default="rw", description="Prefix of every Redis key the worker writes.")
    redis_socket_timeout_s: float = Field(
        default=10.0, gt=0, description="How long a Redis reply may take before the connection is given up."
    )
    redis_connect_timeout_s: float = Field(default=3.0, gt=0, description="How long connecting to Redis may take.")
    redis_health_check_interval_s: int = Field(
        default=15, ge=0, description="A connection idle this long is PINGed before use (0: never)."
    )
    redis_max_backoff_s: float = Field(
        default=5.0, gt=0, description="Longest wait between two attempts to reach Redis during an outage."
    )

    smtp_host: str | None = Field(
        default=None,
        description="SMTP server. Unset: emails go to OUTBOX_DIR as .eml files.",
    )
    smtp_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Default 25, 587 (starttls) or 465 (tls).",
    )
    smtp_security: Literal["none", "starttls", "tls"] = Field(default="starttls", description="Transport security.")
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_timeout_s: float = Field(default=30.0, gt=0)
    smtp_pool_size: int = Field(default=4, ge=1, le=64, description="Persistent SMTP connections per process.")
    smtp_ca_file: Path | None = Field(default=None, description="Extra CA bundle to trust (tests, private CAs).")
    mail_from: str = Field(
        default="Renewals <renewals@example.com>",
        description="From header and envelope sender.",
    )

    outbox_dir: Path = Field(
        default=Path("outbox"),
        description="Where the embedded default writes .eml files.",
    )
    rules_path: Path = Field(
        default_factory=lambda: default_data_path("rules", "default.yaml"),
        description="The rule file. Unset: rules/default.yaml of the checkout, else the packaged copy.",
    )
    templates_dir: Path = Field(
        default_factory=lambda: default_data_path("templates", "email"),
        description="The email templates. Unset: templates/email of the checkout, else the packaged copy.",
    )

    event_id_ttl_days: int = Field(
        default=30, ge=1, description="How long the id of a superseded or refused event is recognised."
    )
    event_max_future_s: int = Field(
        default=86_400, ge=0, description="Events dated further ahead than this are dead-lettered (a wrong clock)."
    )
    hubspot_contact_roles: Annotated[tuple[ContactRole, ...], NoDecode] = Field(
        default=("primary", "billing", "decision_maker"),
        description="Client contacts that receive platform-owned (hubspot) mail, comma separated.",
    )
    delivery_batch_size: int = Field(
        default=20,
        ge=1,
        le=1_000,
        description="Due reminders per delivery message: each batch reads and writes Redis a few times in all.",
    )
    delivery_max_retries: int = Field(default=10, ge=0, description="Retries of a deferred send before it is failed.")
    delivery_min_backoff_ms: int = Field(default=5_000, ge=1)
    delivery_max_backoff_ms: int = Field(default=900_000, ge=1)
    send_lease_ms: int = Field(
        default=30_000,
        ge=1_000,
        description="How long a worker holds a reminder it is sending, renewed while it lives: a dead worker's "
        "reminders go out again after this.",
    )
    send_check_window_ms: float = Field(
        default=0.5,
        ge=0,
        le=50,
        description="How long the pre-send checks (and the records of accepted messages) wait for others to "
        "share their Redis round trip: a group commit. Each message waits at most this long before its "
        "transaction; the worker's CPU per message falls by about a sixth at the default.",
    )
    claim_lease_s: float = Field(
        default=900.0,
        gt=0,
        description="How long a reminder waits in the deliveries queue before the scheduler enqueues it again "
        "(longer than the queue's backlog can take).",
    )
    outcome_write_wait_s: float = Field(
        default=300.0,
        ge=0,
        description="How long a worker waits for Redis to record what the SMTP server accepted, before giving up "
        "(those emails may then be sent again).",
    )
    scheduler_poll_s: float = Field(default=1.0, gt=0)
    rules_reload_s: float = Field(default=5.0, gt=0, description="How often a running process looks for rule edits.")
    history_days: int = Field(
        default=90, ge=1, description="Days of history (outcomes, deferrals, steering) kept in Redis."
    )
    dead_letter_max: int = Field(default=100_000, ge=1, description="Dead letters kept (the oldest are trimmed).")
    ingest_batch_size: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Events per queue message from publish_many and renewals enqueue (one message each costs ~1 ms).",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Lowest level logged by the long-running processes (DEBUG logs each event)."
    )
    log_format: Literal["text", "json"] = Field(default="text", description="text lines, or one JSON object a line.")
    log_addresses: Literal["full", "masked"] = Field(
        default="masked", description="Email addresses in logs: masked (j***@acme.com) or in full."
    )
    metrics_enabled: bool = Field(default=True, description="Serve /metrics from the worker and the scheduler.")
    metrics_host: str = Field(default="127.0.0.1", description="Address /metrics binds to (0.0.0.0: every interface).")
    metrics_port: int = Field(
        default=9464, ge=0, le=65535, description="First port tried for /metrics (0: any free port)."
    )
    metrics_port_tries: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Ports tried from METRICS_PORT up, so processes on one host share a range.",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="Folder of the worker processes' metric files (a sub-folder per dramatiq CLI). Unset: temp dir.",
    )
    heartbeat_interval_s: float = Field(default=5.0, gt=0, description="How often workers write their heartbeat.")
    health_max_tick_age_s: float = Field(
        default=60.0, gt=0, description="status --check: unhealthy when no scheduler ticked for this long."
    )
    health_max_overdue_s: float = Field(
        default=600.0, gt=0, description="status --check: unhealthy when a due reminder waits unclaimed this long."
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("mail_from")
    @classmethod
    def _one_mailbox(cls, value: str) -> str:
        check_mail_from(value)
        return value

    @field_validator("hubspot_contact_roles", mode="before")
    @classmethod
    def _split_roles(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("hubspot_contact_roles")
    @classmethod
    def _roles_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one of primary, billing, decision_maker")
        return tuple(dict.fromkeys(value))

    @model_validator(mode="after")
    def _credentials_need_encryption(self) -> Settings:
        if self.smtp_username and not self.smtp_password:
            raise ValueError("SMTP_PASSWORD is required when SMTP_USERNAME is set")
        if self.smtp_username and self.smtp_security == "none":
            raise ValueError("SMTP_SECURITY=none with SMTP_USERNAME would send the password in plaintext")
        return self

    def data_sources(self) -> list[str]:
        """Where the rules and templates come from, for the start-up log."""
        lines = []
        for name, path in (("rules", self.rules_path), ("templates", self.templates_dir)):
            if f"{name}_path" in self.model_fields_set or f"{name}_dir" in self.model_fields_set:
                origin = f"{name.upper()}_{'PATH' if name == 'rules' else 'DIR'}"
            elif path.is_relative_to(BUNDLED_ROOT):
                origin = "the defaults packaged with the worker"
            else:
                origin = "the checkout"
            lines.append(f"{name}: {path} (from {origin})")
        return lines

    @property
    def redis_url_redacted(self) -> str | None:
        """REDIS_URL with its password replaced by ***, for logs and `renewals status`."""
        if self.redis_url is None:
            return None
        parts = urlsplit(self.redis_url)
        if parts.password is None:
            return self.redis_url
        user = parts.username or ""
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))

    def secrets(self) -> list[str]:
        """Values that must never reach a log line: the SMTP password and the one in REDIS_URL."""
        found = [self.smtp_password] if self.smtp_password else []
        if self.redis_url is not None:
            password = urlsplit(self.redis_url).password
            if password:
                found.append(password)
        return found

    @property
    def embedded(self) -> bool:
        return self.redis_url is None

    @property
    def smtp_port_effective(self) -> int:
        if self.smtp_port is not None:
            return self.smtp_port
        return {"none": 25, "starttls": 587, "tls": 465}[self.smtp_security]


def check_mail_from(value: str) -> tuple[str, str]:
    """The display name and address of ``MAIL_FROM``: exactly one mailbox, with a valid address.

    Two addresses are refused rather than cut to the first: the From header would not say what
    the setting says. Raises ``ValueError`` naming what is wrong.
    """
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError("must not contain control characters (CR, LF...)")
    mailboxes = [(name, address) for name, address in getaddresses([value]) if name or address]
    if len(mailboxes) != 1:
        found = "no address" if not mailboxes else f"{len(mailboxes)} addresses"
        raise ValueError(f"must be one mailbox such as 'Renewals <renewals@example.com>', found {found}")
    name, address = mailboxes[0]
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not a valid mailbox ({address!r}: {exc})") from None
    return name, address


def _error_line(err: Mapping[str, Any]) -> str:
    """One setting's error, named as the variable ops set (a check across settings names its own)."""
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["loc"]:
        return f" {str(err['loc'][0]).upper()}: {message}"
    return f": {message}"


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment (and overrides), turning errors into ConfigError.

    The message is one line (several problems are joined by '; '), so that a process refusing to
    start says why in the one line ops see.
    """
    # ENV_FILE names a dotenv file (config/example.env's format) read under the environment's values.
    env_file = os.environ.get("ENV_FILE") or None
    if env_file is not None and not Path(env_file).is_file():
        raise ConfigError(f"invalid setting ENV_FILE: no such file: {env_file}")
    try:
        return Settings(_env_file=env_file, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError("invalid setting" + ";".join(_error_line(err) for err in exc.errors())) from None
    except SettingsError as exc:
        raise ConfigError(f"invalid setting: {exc}") from None
