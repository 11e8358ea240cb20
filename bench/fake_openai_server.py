"""A fake OpenAI-compatible chat-completions server on 127.0.0.1, for the api:MODEL@BASE_URL VLMs without a model.

    python bench/fake_openai_server.py [--port 8765] [--delay 0.2]     # serves until Ctrl-C; prints its base URL

POST /v1/chat/completions answers from the prompt and the image it is sent: a prompt asking for a bounding box
gets `The part is here: [x0, y0, x1, y1]` (the centre half of the image it was shown, in its pixels), any other
prompt `the handle of the object`. Usage counts the prompt's and the answer's characters / 4 as tokens.
GET /stats gives the requests served so far. `FakeOpenAIServer(faults=...)` (the tests) makes the requests whose
prompt holds a given text answer, in turn, with faults: `429` (Retry-After: 0; `429:S` sends S), `500` (or any other status), `slow` (answers after
`slow_seconds`), `malformed` (a body that is not JSON), `no-choices` (an empty choice list), `401`; after its
list of faults a row gets the normal answer.
"""

import argparse
import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _prompt_and_image(body: dict) -> tuple:
    text, image = "", None
    for message in body.get("messages", []):
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        for part in parts:
            if part.get("type") == "text":
                text += part.get("text", "")
            elif part.get("type") == "image_url":
                from PIL import Image

                encoded = part["image_url"]["url"].split(",", 1)[1]
                image = Image.open(io.BytesIO(base64.b64decode(encoded)))
    return text, image


def canned_answer(prompt: str, image) -> str:
    if "bounding box" in prompt.lower():
        width, height = image.size if image is not None else (100, 100)
        box = [round(width / 4), round(height / 4), round(3 * width / 4), round(3 * height / 4)]
        return f"The part is here: [{', '.join(map(str, box))}]"
    return "the handle of the object"


class FakeOpenAIServer:
    """`with FakeOpenAIServer(...) as server: server.base_url` — serves in a thread on 127.0.0.1."""

    def __init__(self, *, port: int = 0, delay: float = 0.0, faults: dict | None = None, slow_seconds: float = 2.0):
        self.delay, self.slow_seconds = delay, slow_seconds
        self.faults = {text: list(kinds) for text, kinds in (faults or {}).items()}
        self.requests, self.authorizations, self.lock = [], set(), threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
                    pass

            def do_GET(self):
                with owner.lock:
                    stats = {"requests": len(owner.requests), "faults": [k for _, k in owner.requests if k]}
                self._send(200, json.dumps(stats).encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                prompt, image = _prompt_and_image(body)
                fault = None
                with owner.lock:
                    owner.authorizations.add(self.headers.get("Authorization"))
                    for text, kinds in owner.faults.items():
                        if text in prompt and kinds:
                            fault = kinds.pop(0)
                            break
                    owner.requests.append((prompt, fault))
                if owner.delay:
                    time.sleep(owner.delay)
                if fault and fault.startswith("429"):  # "429" or "429:SECONDS" (its Retry-After, default 0)
                    wait = fault.partition(":")[2] or "0"
                    return self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": wait})
                if fault and fault.isdigit():  # any other status: "500", "503", "401", ...
                    return self._send(int(fault), b'{"error": {"message": "fault"}}')
                if fault == "malformed":
                    return self._send(200, b'{"choices": [{"message": ')
                if fault == "no-choices":
                    return self._send(200, json.dumps({"choices": [], "usage": {}}).encode())
                if fault == "slow":
                    time.sleep(owner.slow_seconds)
                answer = canned_answer(prompt, image)
                reply = {
                    "id": "fake",
                    "object": "chat.completion",
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
                    "usage": {"prompt_tokens": len(prompt) // 4, "completion_tokens": len(answer) // 4},
                }
                self._send(200, json.dumps(reply).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(argv)
    with FakeOpenAIServer(port=args.port, delay=args.delay) as server:
        print(f"serving {server.base_url} (Ctrl-C to stop)", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
