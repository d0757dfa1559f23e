"""A loopback OpenAI-compatible VLM for tests: `POST /v1/chat/completions` on 127.0.0.1, real HTTP.

It answers every image with five structured variants that name the image's sha1, so a test can
tell which picture was captioned (`answered`), and can turn into an outage (HTTP 503) after
`healthy_answers` answers. Shared by the tests that ingest images through the real `rsrt` CLI.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatCompletions:
    """An OpenAI-compatible `POST /v1/chat/completions` that answers `healthy_answers` times, then 503s.

    HTTP/1.0 (one connection per request), so stopping it really refuses the next connection.
    """

    def __init__(self, port: int = 0, healthy_answers: int | None = None) -> None:
        self.healthy_answers = healthy_answers  # None: always healthy
        self.answered: list[str] = []  # sha1 of each image captioned
        self.failed = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parts = body["messages"][0]["content"]
        url = next(p["image_url"]["url"] for p in parts if p.get("type") == "image_url")
        digest = hashlib.sha1(base64.b64decode(url.split(",", 1)[1])).hexdigest()
        with self._lock:
            if self.healthy_answers is not None and len(self.answered) >= self.healthy_answers:
                self.failed += 1
                return 503, {"error": {"message": "model overloaded"}}
            self.answered.append(digest)
        variants = [{"one_sentence": f"Aerial scene {digest[:8]}, view {i}.",
                     "feature": f"large area (center); {i} small buildings (NE)",
                     "caption": f"An aerial view {digest[:8]} with {i} small buildings in the northeast."}
                    for i in range(1, 6)]
        content = json.dumps({"variants": variants})
        return 200, {"choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": content}}]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                status, payload = (404, {"error": {"message": "no such path"}}) if self.path != \
                    "/v1/chat/completions" else server._reply(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
