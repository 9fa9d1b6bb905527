"""The verification as WSGI (PEP 3333) middleware; see customer_auth/middleware.py. The WSGI
server's view of the request answers the decision's needs, in one pass."""

from __future__ import annotations

import io
import urllib.parse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from customer_auth.core.needs import Parts, RequestParts, answers, run
from customer_auth.errors import BodyIncomplete, BodyTooLarge
from customer_auth.service.common import SAFE_IN_PATH, Verification

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from typing_extensions import Buffer, Unpack

    from customer_auth.service.common import Options

CUSTOMER_ID_KEY = "customer_verification.customer_id"  # in the WSGI environ


class _WSGIRequest:
    """A header sent twice arrives joined with a comma (gunicorn, wsgiref): RFC 9110's join."""

    def __init__(self, environ: WSGIEnvironment) -> None:
        self.environ = environ
        self.headers: dict[str, list[str]] = {
            key[5:].replace("_", "-").lower(): [value]
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        for key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            if environ.get(key):
                self.headers[key.replace("_", "-").lower()] = [environ[key]]

    def parts(self, need: RequestParts) -> Parts:
        return Parts(self.method(), self.target(), self.scheme())

    def method(self) -> str:
        return str(self.environ["REQUEST_METHOD"])

    def target(self) -> str:
        """The raw target where the server gives it (gunicorn: RAW_URI, uWSGI: REQUEST_URI);
        else rebuilt from PEP 3333's decoded PATH_INFO, percent-encoding what must be."""
        raw = self.environ.get("RAW_URI") or self.environ.get("REQUEST_URI")
        if raw:
            return str(raw)
        path = urllib.parse.quote(
            self.environ.get("SCRIPT_NAME", "") + self.environ.get("PATH_INFO", ""),
            safe=SAFE_IN_PATH,
            encoding="latin-1",
        )
        query = self.environ.get("QUERY_STRING", "")
        return f"{path}?{query}" if query else path

    def scheme(self) -> str:
        return str(self.environ["wsgi.url_scheme"])

    def has_body(self) -> bool:
        """What the app would read: a server that frames the input (``wsgi.input_terminated``:
        gunicorn, werkzeug) is asked for a byte, kept for the app; else CONTENT_LENGTH's number."""
        if self.environ.get("wsgi.input_terminated"):
            stream = self.environ["wsgi.input"]
            try:
                first = stream.read(1)
            except Exception:  # the server's own error for a connection that ended
                return True
            if first:
                self.environ["wsgi.input"] = io.BufferedReader(_Prepended(first, stream))
            return bool(first)
        length = self.environ.get("CONTENT_LENGTH", "").strip()
        return (length.isdigit() and int(length) > 0) or "HTTP_TRANSFER_ENCODING" in self.environ

    def body(self, limit: int) -> bytes:
        """Reads the body as the server frames it, up to ``limit``; the app gets a fresh input."""
        length = self.environ.get("CONTENT_LENGTH", "").strip()
        declared = int(length) if length.isdigit() else None
        if declared is not None and declared > limit:
            raise BodyTooLarge()
        framed = declared is None or self.environ.get("wsgi.input_terminated")
        wanted = limit + 1 if framed or declared is None else declared
        chunks: list[bytes] = []
        size = 0
        try:
            while size < wanted:
                chunk = self.environ["wsgi.input"].read(wanted - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except Exception:  # the server's own error for a connection that ended mid-body
            raise BodyIncomplete() from None
        if size > limit:
            raise BodyTooLarge()
        if declared is not None and size < declared:
            raise BodyIncomplete()
        body = b"".join(chunks)
        self.environ["wsgi.input"] = io.BytesIO(body)
        self.environ["CONTENT_LENGTH"] = str(len(body))
        self.environ.pop("HTTP_TRANSFER_ENCODING", None)
        return body


class _Prepended(io.RawIOBase):
    """A WSGI input with the byte already read put back in front (wrapped in a BufferedReader)."""

    def __init__(self, head: bytes, stream: Any) -> None:
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Buffer) -> int:
        view = memoryview(buffer)
        data: bytes = self._head or self._stream.read(len(view))
        self._head = b""
        view[: len(data)] = data
        return len(data)


class WSGIMiddleware:
    """Verifies every request before ``app`` (a PEP 3333 application) runs; see the module."""

    def __init__(self, app: WSGIApplication, **options: Unpack[Options]) -> None:
        self.app = app
        self._verification = Verification(options)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        verification = self._verification
        environ.pop("HTTP_" + verification.customer_id_header.upper().replace("-", "_"), None)
        if verification.exempt(environ.get("PATH_INFO", "")):
            return self.app(environ, start_response)
        verifier, cache, nonces = verification.process()
        request = _WSGIRequest(environ)
        try:
            customer = run(verifier.decide(request.headers), answers(request, cache, nonces))
        except Exception as error:
            status, headers, body = verification.refusal(error)
            start_response(status, headers)
            return [body]
        verification.verified()
        environ[CUSTOMER_ID_KEY] = customer.customer_id
        return self.app(environ, start_response)
