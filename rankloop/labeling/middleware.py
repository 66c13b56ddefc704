"""Pure ASGI middleware of the labeling app (Starlette's ``BaseHTTPMiddleware`` costs more than a
request's SQL): the request body limit and the security headers."""

from __future__ import annotations

import base64
import hashlib
import re

from starlette.exceptions import HTTPException

# Requests that carry an import (a whole round's prompts and candidates) get their own, larger limit.
IMPORT_PATHS = re.compile(r"^/(api|admin)/projects/\d+/(import|import-files|import-judgements)$")

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/redoc")


class BodyLimit:
    """413 for a request body over the limit: refused at the first read when Content-Length says so,
    else counted as it arrives (chunked uploads), so no route ever buffers more than the limit.
    The reply names the limit and never the payload.

    (FastAPI's own ``max_body_size`` arrived only in releases far newer than the ones rankloop
    supports; this wrapper works on all of them.)"""

    def __init__(self, app, default: int, imports: int):
        self.app, self.default, self.imports = app, default, imports

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.imports if IMPORT_PATHS.match(scope["path"]) else self.default
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        received = 0

        async def limited_receive():
            nonlocal received
            # An HTTPException here reaches the app's handler (FastAPI re-raises it from the body
            # reader), so pages get the error page and the API its JSON.
            too_big = HTTPException(413, f"request body over the limit of {limit} bytes")
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                raise too_big
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_big
            return message

        await self.app(scope, limited_receive, send)


def docs_csp(html: bytes) -> str:
    """The policy for FastAPI's /docs and /redoc pages only: their scripts and styles come from a
    CDN, with one inline script (allowed by its hash, not by 'unsafe-inline'); ReDoc runs a worker
    from a blob: URL and injects styles. Every other page keeps ``CSP``."""
    text = html.decode("utf-8", "replace")
    scripts = sorted(set(re.findall(r'<script[^>]+src="(https://[^/"]+)', text)))
    styles, icons = set(), set()
    for tag in re.findall(r"<link\b[^>]*>", text):
        href, rel = re.search(r'href="(https://[^/"]+)', tag), re.search(r'rel="([^"]*)"', tag)
        if href:
            (icons if rel and "icon" in rel.group(1) else styles).add(href.group(1))
    inline = [f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
              for body in re.findall(r"<script>(.*?)</script>", text, re.S)]
    return "; ".join([
        "default-src 'self'",
        " ".join(["script-src 'self'", *scripts, *inline]),
        " ".join(["style-src 'self' 'unsafe-inline'", *sorted(styles)]),
        "font-src 'self' data: https://fonts.gstatic.com",
        " ".join(["img-src 'self' data:", *sorted(icons), *scripts]),
        "worker-src 'self' blob:", "connect-src 'self'", "object-src 'none'", "base-uri 'none'", "frame-ancestors 'none'",
    ])


class SecurityHeaders:
    """Every response: no MIME sniffing, ``Referrer-Policy: same-origin`` (task URLs and ids stay
    on this site), HSTS when served over HTTPS (``secure``). Pages and API answers (authenticated
    data) are ``Cache-Control: no-store``; static files may be cached. HTML gets the strict CSP and
    no framing."""

    def __init__(self, app, secure: bool = False):
        self.app, self.secure = app, secure

    def _headers(self, path: str, headers: list, body: bytes | None = None) -> list:
        html = any(k == b"content-type" and v.startswith(b"text/html") for k, v in headers)
        headers = headers + [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
        if self.secure:
            headers.append((b"strict-transport-security", b"max-age=31536000"))
        if not path.startswith("/static/") and not any(k == b"cache-control" for k, _ in headers):
            headers.append((b"cache-control", b"no-store"))
        if html:
            csp = docs_csp(body) if body is not None else CSP
            headers += [(b"content-security-policy", csp.encode()), (b"x-frame-options", b"DENY")]
        return headers

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in DOCS_PATHS:
            return await self._docs(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._headers(path, list(message.get("headers", [])))}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _docs(self, scope, receive, send):
        """The docs pages are small: hold the body back to hash their inline script into the CSP."""
        start, chunks = None, []

        async def buffered(message):
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = b"".join(chunks)
                await send({**start, "headers": self._headers(scope["path"], list(start.get("headers", [])), body)})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, buffered)
