"""A bad MAIL_FROM met when sending is our configuration: retried until fixed, never the reminder's outcome."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from test_delivery_integration import FIRST_DUE, make_runtime, outcome, seed

from worker.domain.errors import ConfigError
from worker.service.clock import VirtualClock
from worker.service.delivery import deliver
from worker.service.runtime import build_runtime

pytestmark = pytest.mark.integration


def deliver_once(rt, *, last_try: bool):
    async def attempt():
        try:
            return await deliver(rt, "p1", "r1", "first-notice", last_try=last_try)
        finally:
            await rt.close_mailer()

    return asyncio.run(attempt())


@pytest.mark.parametrize("last_try", [False, True])
def test_a_bad_mail_from_is_retried_even_on_the_last_try_and_the_reminder_goes_once_it_is_fixed(
    smtp_server, redis_url, last_try
):
    clock = VirtualClock(datetime(2026, 12, 1, tzinfo=UTC))
    good = make_runtime(smtp_server, redis_url, clock)
    seed(good)
    clock.advance_to(FIRST_DUE)
    # Settings are checked at start; this runtime gets past the check the way an older build did.
    bad = build_runtime(good.settings.model_copy(update={"mail_from": "Renewals <not an address>"}), clock=clock)
    with pytest.raises(ConfigError, match="MAIL_FROM"):
        deliver_once(bad, last_try=last_try)
    assert outcome(good) is None, "a configuration error must not be the reminder's final outcome"
    assert smtp_server.messages == []
    # Fixed and restarted: the reminder goes out.
    assert deliver_once(good, last_try=False) == "sent"
    assert outcome(good).kind == "sent"
    assert len(smtp_server.messages) == 1
    bad.close()
    good.close()
