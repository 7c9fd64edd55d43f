"""What `dramatiq bench.ablated_entrypoint` imports: the production worker without the send-time check.

Each send trusts its batch's view and its outcomes are written when the batch ends, as before
issues 10 and 11 (``delivery_cpu._without("send-time check")``, entered for the process's life):
the "before" of ``python -m bench.send_check_e2e``. Never a way to run the service.
"""

from __future__ import annotations

from .delivery_cpu import without

without("send-time check").__enter__()

from worker.entrypoint import broker  # noqa: E402  (after the patch, as the workers' module)

__all__ = ["broker"]
