"""`renewals preview --serve`: the gallery from a local HTTP server, rendered on each request.

Each request reads the templates and wording again, so an edit shows on reload. The server binds
to loopback only: previews hold real names and addresses when made from stored renewals.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..domain.errors import RenewalsError
from ..mail.reload import templates_digest
from ..mail.render import Renderer
from .gallery import build_gallery, index_html, page_html
from .preview import Preview, locales_of, render_page

__all__ = ["PreviewSource", "fresh_renderer", "make_server"]

# The gallery runs no script of its own, and the emails in it (srcdoc iframes, which inherit this
# policy) load nothing from the network: a preview never tells a tracker it was opened.
_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-src 'self'"
_PAGE = re.compile(r"^/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)\.(html|eml)$")


@dataclass(frozen=True)
class PreviewSource:
    """How to make the previews afresh: a new renderer (templates read again), then the previews from it."""

    renderer: Callable[[], Renderer]
    previews: Callable[[Renderer], Sequence[Preview]]
    mail_from: str
    description: str


def _handler(source: PreviewSource) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "renewals-preview"

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            try:
                renderer = source.renderer()
                previews = source.previews(renderer)
                if path in ("/", "/index.html"):
                    gallery = build_gallery(renderer, previews, mail_from=source.mail_from, source=source.description)
                    self._reply(HTTPStatus.OK, "text/html; charset=utf-8", index_html(gallery).encode("utf-8"))
                    return
                match = _PAGE.match(path)
                preview = next((p for p in previews if match and p.slug == match[1]), None)
                if match is None or preview is None or match[2] not in locales_of(preview):
                    self._reply(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"no such preview\n")
                    return
                page = render_page(renderer, preview, match[2], mail_from=source.mail_from)
                if match[3] == "html":
                    self._reply(HTTPStatus.OK, "text/html; charset=utf-8", page_html(page).encode("utf-8"))
                elif page.eml is not None:
                    self._reply(HTTPStatus.OK, "message/rfc822", page.eml)
                else:
                    self._reply(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"this email would not be sent\n")
            except RenewalsError as exc:
                # A broken template or rule file is what someone editing them needs to see, on the page.
                body = f"cannot render the previews: {exc}\n".encode()
                self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", body)

        def _reply(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header(
                "Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-src 'self'"
            )
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def fresh_renderer(templates_dir: Path) -> Callable[[], Renderer]:
    """A renderer of the folder as it is now: a new one after any edit, the same one while nothing changed.

    Reading the templates and wording again on every request would cost more than the page itself.
    """
    current: list[tuple[str, Renderer]] = []
    lock = threading.Lock()

    def renderer() -> Renderer:
        digest = templates_digest(templates_dir)
        with lock:
            if not current or current[0][0] != digest:
                current[:] = [(digest, Renderer(templates_dir))]
            return current[0][1]

    return renderer


def make_server(source: PreviewSource, *, port: int = 0) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (``port`` 0: any free port; ``server.server_address`` says which)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(source))
    server.daemon_threads = True
    return server
