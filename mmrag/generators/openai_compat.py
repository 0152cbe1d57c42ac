"""``openai``: any OpenAI-compatible chat endpoint (vLLM, llama.cpp server, Ollama, ...).

POSTs ``{base_url}/chat/completions`` (``base_url`` as in the OpenAI SDK, e.g.
``http://127.0.0.1:8000/v1``; Ollama: ``http://127.0.0.1:11434/v1``) with the request's
messages; images are attached to the last user message as ``data:`` URLs
(``{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}``), which vision
models served this way accept.

HTTP is the standard library's ``http.client`` (no extra dependency), with separate connect and
read timeouts. Proxy variables (``HTTP_PROXY`` ...) are not used: the endpoints are usually on
loopback or a local network. Errors:

* nothing listening / unknown host -> :class:`EndpointUnreachableError` naming the URL, after
  ``retries`` quick retries (backoff starts at ``backoff`` seconds), so it fails in about a
  second by default;
* 429 and 5xx answers and dropped connections are retried with exponential backoff (a 429's
  ``Retry-After`` is honoured up to ``max_backoff``), then an :class:`EndpointError`;
* no answer within ``timeout`` seconds -> :class:`EndpointTimeoutError` (not retried: a model
  that is too slow once is usually too slow again);
* other 4xx answers (bad model name, bad key) -> :class:`EndpointError` at once, with the
  server's message.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import time
from typing import Any
from urllib.parse import urlsplit

from mmrag.generators.base import (
    GENERATORS,
    Generator,
    EndpointError,
    EndpointTimeoutError,
    EndpointUnreachableError,
    GenerationRequest,
    GenerationResult,
    GeneratorError,
    check_messages,
    image_to_data_url,
)

__all__ = ["OpenAIGenerator", "build_payload"]

_RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class _Unreachable(Exception):
    """Connecting failed (refused, unknown host, no route, connect timeout)."""


def build_payload(request: GenerationRequest, model: str | None,
                  extra_body: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON body of a ``/chat/completions`` call for ``request``."""
    check_messages(request.messages)
    messages = [dict(m) for m in request.messages]
    if request.images:
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users:
            messages.append({"role": "user", "content": ""})
            users = [len(messages) - 1]
        last = messages[users[-1]]
        content = last["content"]
        parts = list(content) if isinstance(content, list) else (
            [{"type": "text", "text": content}] if content else []
        )
        for img in request.images:
            parts.append({"type": "image_url", "image_url": {"url": image_to_data_url(img)}})
        last["content"] = parts
    if not messages:
        raise GeneratorError("the request has no messages")
    body: dict[str, Any] = {
        "messages": messages,
        "max_tokens": int(request.max_tokens),
        "temperature": float(request.temperature),
        "stream": False,
    }
    if model:
        body["model"] = model
    if request.stop:
        body["stop"] = list(request.stop)
    if extra_body:
        body.update(extra_body)
    return body


class OpenAIGenerator(Generator):
    """Chat completions from an OpenAI-compatible server."""

    reads_images = True

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        connect_timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        extra_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ):
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GeneratorError(f"base_url must be an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self._scheme, self._host = parts.scheme, parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._path = (parts.path or "") + "/chat/completions"
        self.model = model
        self.api_key = os.environ.get("OPENAI_API_KEY", "") if api_key is None else api_key
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.extra_body = dict(extra_body or {})
        self.headers = dict(headers or {})
        self.name = f"openai:{model}" if model else "openai"

    # ------------------------------------------------------------------ HTTP

    def _post_once(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One POST; returns (status, headers, body). Raises OSError-family on network errors."""
        if self._scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.connect_timeout,
                context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.connect_timeout)
        try:
            try:
                conn.connect()
            except (socket.timeout, TimeoutError):
                raise _Unreachable(f"connection timed out after {self.connect_timeout:g} s") from None
            except OSError as e:  # refused, unknown host, no route, TLS handshake failure
                raise _Unreachable(_describe(e)) from None
            conn.sock.settimeout(self.timeout)  # the read timeout from here on
            headers = {"Content-Type": "application/json", "Accept": "application/json",
                       "User-Agent": "mmrag", **self.headers}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def _delay(self, attempt: int, retry_after: str | None = None) -> float:
        d = min(self.backoff * (2**attempt), self.max_backoff)
        if retry_after:
            try:
                d = min(max(d, float(retry_after)), self.max_backoff)
            except ValueError:
                pass
        return d

    def chat(self, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` with retries; returns the decoded JSON answer."""
        body = json.dumps(payload).encode("utf-8")
        last = ""
        attempts = self.retries + 1
        for attempt in range(attempts):
            retry_after = None
            try:
                status, headers, data = self._post_once(body)
            except _Unreachable as e:
                last, unreachable = str(e), True
            except (socket.timeout, TimeoutError):
                raise EndpointTimeoutError(
                    f"{self.url} did not answer within {self.timeout:g} s "
                    "(raise the generator's timeout for slow models)", url=self.url) from None
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                last, unreachable = _describe(e), False
            else:
                if status == 200:
                    try:
                        return json.loads(data.decode("utf-8"))
                    except (UnicodeDecodeError, json.JSONDecodeError):
                        raise EndpointError(
                            f"{self.url} answered 200 but not with JSON: {_snippet(data)}",
                            url=self.url, status=status) from None
                if status not in _RETRY_STATUS:
                    raise EndpointError(
                        f"{self.url} answered HTTP {status}: {_snippet(data)}",
                        url=self.url, status=status)
                last, unreachable = f"HTTP {status}: {_snippet(data)}", False
                retry_after = headers.get("retry-after")
            if attempt + 1 < attempts:
                time.sleep(self._delay(attempt, retry_after))
        cls = EndpointUnreachableError if unreachable else EndpointError
        hint = " Is the server running, and is base_url right?" if unreachable else ""
        raise cls(f"cannot get an answer from {self.url} after {attempts} attempt(s): {last}.{hint}",
                  url=self.url)

    # ------------------------------------------------------------------ Generator

    def generate(self, request: GenerationRequest) -> GenerationResult:
        answer = self.chat(build_payload(request, self.model, self.extra_body))
        try:
            choice = answer["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise EndpointError(
                f"{self.url} answered without choices[0].message.content: {_snippet(json.dumps(answer).encode())}",
                url=self.url) from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        finish = choice.get("finish_reason") if isinstance(choice, dict) else None
        return GenerationResult(text=(content or "").strip(), raw=answer, usage=answer.get("usage"),
                                finish_reason=finish if isinstance(finish, str) and finish else "stop")


def _describe(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.gaierror):
        return f"unknown host ({e.strerror or e})"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _snippet(data: bytes, n: int = 300) -> str:
    text = data.decode("utf-8", "replace").strip()
    try:  # OpenAI-style {"error": {"message": ...}}
        obj = json.loads(text)
        err = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(err, dict) and err.get("message"):
            text = str(err["message"])
        elif isinstance(err, str):
            text = err
    except (json.JSONDecodeError, AttributeError):
        pass
    return text[:n] + ("..." if len(text) > n else "") if text else "(empty body)"


@GENERATORS.register("openai")
def _make_openai(**kwargs) -> OpenAIGenerator:
    return OpenAIGenerator(**kwargs)
