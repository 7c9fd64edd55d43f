"""What the end-to-end figures are compared with, on the same Redis and the same SMTP server.

- the queue alone: a no-op actor's drain rate, same broker, middleware, processes and threads;
- our SMTP client's ceiling: aiosmtplib sending ready-made bytes over persistent connections;
- a naive delivery: an ``EmailMessage`` built per email (default policy), ``aiosmtplib.send()`` each;
- the machine's SMTP limit: Postfix's smtp-source.

The message sent is a real reminder: one is delivered by the worker's own code first (``sample``).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import subprocess
import threading
import time
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

import aiosmtplib

from worker.service.delivery import deliver

from .context import BenchContext
from .e2e import REMINDER_ID, bench_population, write_bench_rules
from .noop import NOOP_QUEUE, declare_noop
from .procs import start_workers, wait_until
from .seed import apply_events, plan_refs, trusted_event
from .sink import Sample, postfix_tool

__all__ = ["naive_delivery", "noop_drain", "raw_aiosmtplib", "sample_message", "smtp_source"]


def sample_message(ctx: BenchContext) -> Sample:
    """Deliver one bench reminder with the worker's ``deliver`` and take it back from the server."""
    if ctx.smtp is None:
        raise ValueError("an SMTP server is needed")
    ctx.flush()
    rules_path = write_bench_rules(ctx)
    pop = bench_population(1, "sample")
    rt = ctx.runtime(rules_path)
    try:
        apply_events(rt, (trusted_event(e) for e in pop.events()))
        plan_refs(rt, pop.refs(), rt.rules(), datetime.now(UTC))
        partner_id, renewal_id = pop.renewal_ref(0)

        async def send_one() -> str:
            try:
                return await deliver(rt, partner_id, renewal_id, REMINDER_ID, last_try=True)
            finally:
                await rt.close_mailer()

        result = asyncio.run(send_one())
        if result != "sent":
            raise RuntimeError(f"the sample reminder was not sent: {result}")
    finally:
        rt.close()
        ctx.flush()
    batch = ctx.smtp.take()
    if batch.sample is None:
        raise RuntimeError("the SMTP server did not receive the sample reminder")
    return batch.sample


def noop_drain(
    ctx: BenchContext, *, messages: int, processes: int, threads: int, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Enqueue ``messages`` no-op messages, then time ``dramatiq bench.noop_entrypoint`` draining them."""
    ctx.flush()
    rt = ctx.runtime()
    actor = declare_noop(rt.broker)
    result: dict[str, Any] = {"messages": messages, "processes": processes, "threads": threads}
    workers = None
    try:
        started = time.perf_counter()
        for i in range(messages):
            actor.send("bp0", f"r{i}", REMINDER_ID, 0)
        result["enqueue_per_s"] = round(messages / (time.perf_counter() - started), 1)
        samples: list[tuple[float, int]] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                samples.append((time.perf_counter(), rt.broker.do_qsize(NOOP_QUEUE)))
                time.sleep(0.01)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            workers = start_workers(
                ctx.env(),
                processes=processes,
                threads=threads,
                queues=[NOOP_QUEUE],
                log_path=ctx.log_path(f"noop-p{processes}"),
                module="bench.noop_entrypoint",
            )
            wait_until(lambda: bool(samples) and samples[-1][1] == 0, timeout_s=timeout_s, what="the no-op drain")
        finally:
            stop.set()
            watcher.join()
        first = next(t for t, size in samples if size < messages)
        last = next(t for t, size in samples if size == 0)
        result["drain_s"] = round(last - first, 3)
        result["rate_per_s"] = round(messages / (last - first), 1) if last > first else None
    finally:
        if workers is not None:
            result["exit_code"] = workers.stop(timeout_s=30)
        rt.close()
        ctx.flush()
    return result


async def _raw_send(host: str, port: int, sample: Sample, total: int, connections: int) -> tuple[float, float]:
    clients = [aiosmtplib.SMTP(hostname=host, port=port, start_tls=False, use_tls=False) for _ in range(connections)]
    await asyncio.gather(*(client.connect() for client in clients))
    remaining = total

    async def pump(client: aiosmtplib.SMTP) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await client.sendmail(sample.sender, list(sample.recipients), sample.content)

    try:
        started = time.time()
        await asyncio.gather(*(pump(client) for client in clients))
        return started, time.time()
    finally:
        for client in clients:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                await client.quit()


def _raw_process(
    host: str, port: int, sample: Sample, total: int, connections: int, start_at: float
) -> tuple[float, float]:
    time.sleep(max(0.0, start_at - time.time()))
    return asyncio.run(_raw_send(host, port, sample, total, connections))


def raw_aiosmtplib(
    ctx: BenchContext, sample: Sample, *, messages: int, connections: int = 8, processes: int = 1
) -> dict[str, Any]:
    """Ready-made bytes over ``connections`` persistent connections per process: our SMTP client's ceiling."""
    assert ctx.smtp is not None
    host, port = ctx.smtp.host, ctx.smtp.port
    if processes == 1:
        spans = [asyncio.run(_raw_send(host, port, sample, messages, connections))]
    else:
        shares = [messages // processes + (1 if k < messages % processes else 0) for k in range(processes)]
        start_at = time.time() + 3.0  # every process connected and waiting before the clock starts
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            jobs = [pool.apply_async(_raw_process, (host, port, sample, n, connections, start_at)) for n in shares]
            spans = [job.get(timeout=600) for job in jobs]
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    batch = ctx.smtp.take()
    return {
        "messages": messages,
        "connections": connections,
        "processes": processes,
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(messages / elapsed, 1),
        "sink_messages": batch.messages,
        "message_bytes": len(sample.content),
    }


def _naive_message(parsed: EmailMessage, sample: Sample, n: int) -> EmailMessage:
    message = EmailMessage()
    message["From"] = parsed["From"]
    message["To"] = parsed["To"]
    if parsed["Cc"]:
        message["Cc"] = parsed["Cc"]
    message["Subject"] = parsed["Subject"]
    message["Date"] = datetime.now(UTC)
    message["Message-ID"] = make_msgid(idstring=f"naive{n}", domain="platform.example.com")
    plain = parsed.get_body(("plain",))
    html = parsed.get_body(("html",))
    message.set_content(plain.get_content() if plain is not None else "reminder")
    if html is not None:
        message.add_alternative(html.get_content(), subtype="html")
    return message


async def _naive_send(host: str, port: int, sample: Sample, total: int, concurrency: int) -> float:
    parsed = message_from_bytes(sample.content, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    counter = iter(range(total))

    async def pump() -> None:
        for n in counter:
            message = _naive_message(parsed, sample, n)
            await aiosmtplib.send(message, hostname=host, port=port, start_tls=False, use_tls=False)

    started = time.perf_counter()
    await asyncio.gather(*(pump() for _ in range(concurrency)))
    return time.perf_counter() - started


def naive_delivery(ctx: BenchContext, sample: Sample, *, messages: int, concurrency: int = 8) -> dict[str, Any]:
    """A delivery as typically written: stdlib message per email, a new connection per email."""
    assert ctx.smtp is not None
    elapsed = asyncio.run(_naive_send(ctx.smtp.host, ctx.smtp.port, sample, messages, concurrency))
    batch = ctx.smtp.take()
    return {
        "messages": messages,
        "concurrency": concurrency,
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(messages / elapsed, 1),
        "sink_messages": batch.messages,
    }


def smtp_source(
    ctx: BenchContext, sample: Sample, *, messages: int, sessions: int = 20, timeout_s: float = 300.0
) -> dict[str, Any]:
    """Postfix's smtp-source sending the sample reminder (``-F``) over ``sessions`` persistent sessions."""
    assert ctx.smtp is not None
    binary = postfix_tool("smtp-source")
    message_file = ctx.workdir / "sample.eml"
    # smtp-source appends CRLF to each line itself.
    message_file.write_bytes(sample.content.replace(b"\r\n", b"\n"))
    command = [binary, "-d", "-s", str(sessions), "-m", str(messages), "-r", str(len(sample.recipients))]
    command += ["-F", str(message_file), "-f", sample.sender, "-t", sample.recipients[0]]
    command.append(f"inet:{ctx.smtp.host}:{ctx.smtp.port}")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, timeout=timeout_s)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
    batch = ctx.smtp.take()
    return {
        "messages": messages,
        "sessions": sessions,
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(messages / elapsed, 1),
        "sink_messages": batch.messages,
    }
