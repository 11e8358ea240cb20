"""`api:MODEL@BASE_URL` — any OpenAI-compatible chat-completions endpoint as the VLM of vlm-box or reason-then-ground.

e.g. `vlm-box:api:gpt-4o@https://api.openai.com/v1,facebook/sam-vit-huge` or, for a model served by vLLM/SGLang,
`vlm-box:api:Qwen/Qwen2.5-VL-72B-Instruct@http://gpu-box:8000/v1,facebook/sam-vit-huge`. It costs one request
per row (a rerun with the same prompts, images and settings costs none: see the cache).

Request     `POST BASE_URL/chat/completions` through httpx (`pip install instructpart[api]`):
            one user message holding the prompt and the image as a base64 JPEG data URL (quality 90), the image
            resized so its longest side is at most `longest_side` (default 1024; never enlarged) - the size
            sent is what the prompt quotes and what a box is mapped back from; `max_tokens` (default 256),
            `temperature` (default 0).
Key         read from the environment variable `api_key_env` (default OPENAI_API_KEY) and sent only as the
            `Authorization: Bearer` header; it is never printed, logged or written, and is masked out of any
            error text a server returns. The default variable unset: requests go without the header (a local
            server needs none); a variable named with `api_key_env` must be set.
Retries     429, 5xx, timeouts (`timeout`, default 60 s) and connection errors are retried up to `max_retries`
            times (default 4) after `backoff * 2**attempt` seconds (default 1 s, at most `max_backoff`, 60 s),
            or after the server's `Retry-After` (seconds or an HTTP date; at most `max_backoff`) when it sends
            one. Other 4xx, a body that is not JSON and an answer with no choice fail the row at once (asking
            again gets the same). A row that still has no answer is a failed row (see evaluate: the run stops
            non-zero naming how many, unless `allow_failures=true` scores them as empty masks).
Concurrency `concurrency` rows of a batch are in flight at once (default 4; give `--batch-size` at least that).
Cache       one JSON file per answer under `cache_dir` (default `$XDG_CACHE_HOME/instructpart/api`, else
            `~/.cache/instructpart/api`), named by the sha256 of (base URL, model, full prompt, sha256 of the
            image's pixels, longest side, max_tokens, temperature); it holds the answer and its token usage only.
            Failed rows are not cached, so a rerun asks only for them.
Usage       `usage()` counts requests sent, retries, failed rows, cache hits and misses, and sums the
            prompt/completion tokens of the answers (cached ones included, as billed when first asked); evaluate
            puts it in results.json's provenance.
"""

import base64
import email.utils
import hashlib
import io
import json
import os
import threading
import time
import urllib.parse

from .base import VLMAnswer

DEFAULTS = {
    "api_key_env": "OPENAI_API_KEY",
    "concurrency": 4,
    "max_retries": 4,
    "timeout": 60.0,
    "backoff": 1.0,
    "max_backoff": 60.0,
    "longest_side": 1024,
    "max_tokens": 256,
    "temperature": 0.0,
    "cache_dir": None,
}
API_OPTIONS = tuple(DEFAULTS)
JPEG_QUALITY = 90


def parse_api_spec(spec: str) -> tuple:
    """`"api:MODEL@BASE_URL"` -> `(model, base_url)`."""
    body = spec[len("api:") :] if spec.startswith("api:") else spec
    model, at, base_url = body.partition("@")
    model, base_url = model.strip(), base_url.strip().rstrip("/")
    if not at or not model or not base_url.startswith(("http://", "https://")):
        raise ValueError(f"API model {spec!r} is not api:MODEL@BASE_URL (e.g. api:gpt-4o@https://api.openai.com/v1)")
    return model, base_url


def public_url(url: str) -> str:
    """The URL without user:password (what provenance and the cache key keep)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, ""))


def default_cache_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "instructpart", "api")


def image_sha256(image) -> str:
    """sha256 over the image's mode, size and pixels: the same photo gives the same key whatever its file."""
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def resized_for_request(image, longest_side: int):
    """RGB, its longest side at most `longest_side` (aspect kept, never enlarged)."""
    from PIL import Image

    image = image.convert("RGB")
    scale = longest_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _Failure(Exception):
    def __init__(self, reason: str, retry: bool, wait: float | None = None):
        super().__init__(reason)
        self.reason, self.retry, self.wait = reason, retry, wait


class ApiVLM:
    """`ask(images, prompts) -> list[VLMAnswer]` from an OpenAI-compatible endpoint (see the module docstring)."""

    def __init__(self, model: str, base_url: str, **options):
        from instructpart_dataset.toolbox.extras import require

        try:
            require("httpx", "api", "api:MODEL@BASE_URL")
        except ImportError as error:
            raise ValueError(str(error)) from None
        unknown = sorted(set(options) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown API option(s) {', '.join(unknown)} (options: {', '.join(DEFAULTS)})")
        settings = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
        for name in ("concurrency", "longest_side", "max_tokens"):
            if not isinstance(settings[name], int) or settings[name] < 1:
                raise ValueError(f"{name} must be a whole number of at least 1, got {settings[name]!r}")
        if not isinstance(settings["max_retries"], int) or settings["max_retries"] < 0:
            raise ValueError(f"max_retries must be a whole number of at least 0, got {settings['max_retries']!r}")
        for name in ("timeout", "backoff", "max_backoff", "temperature"):
            if (
                not isinstance(settings[name], (int, float))
                or settings[name] < 0
                or (name == "timeout" and not settings[name])
            ):
                raise ValueError(
                    f"{name} must be a number {'above' if name == 'timeout' else 'of at least'} 0, got {settings[name]!r}"
                )
        self.model, self.base_url = model, base_url
        self.settings = settings
        key_env = str(settings["api_key_env"])
        key = os.environ.get(key_env) or None
        if key is None and "api_key_env" in options:
            raise ValueError(f"the API key variable {key_env} is not set (api_key_env={key_env})")
        self._key = key
        self.cache_dir = os.path.expanduser(settings["cache_dir"] or default_cache_dir())
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("requests", "retries", "failed_rows", "cache_hits", "cache_misses", "prompt_tokens", "completion_tokens"),
            0,
        )
        self._client = None
        self._pool = None

    # --- what provenance keeps -------------------------------------------------------------------------------

    def generation_settings(self) -> dict:
        """The settings that change an answer: part of the cache key and of provenance."""
        return {name: self.settings[name] for name in ("longest_side", "max_tokens", "temperature")}

    def record(self) -> dict:
        return {
            "kind": "api",
            "model": self.model,
            "base_url": public_url(self.base_url),
            "image": f"JPEG quality {JPEG_QUALITY}, longest side at most {self.settings['longest_side']}",
            **self.generation_settings(),
            "max_retries": self.settings["max_retries"],
            "timeout": self.settings["timeout"],
        }

    def usage(self) -> dict:
        with self._lock:
            return dict(self._counts)

    def _count(self, **amounts) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._counts[name] += amount

    # --- the requests ----------------------------------------------------------------------------------------

    def shown_size(self, image) -> tuple:
        scale = self.settings["longest_side"] / max(image.size)
        if scale >= 1:
            return image.size
        return max(1, round(image.width * scale)), max(1, round(image.height * scale))

    def _redact(self, text: str) -> str:
        text = " ".join(str(text).split())
        return text.replace(self._key, "***") if self._key else text

    def _http(self):
        import httpx

        if self._client is None:
            headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
            self._client = httpx.Client(
                timeout=httpx.Timeout(self.settings["timeout"]),
                headers=headers,
                limits=httpx.Limits(max_connections=self.settings["concurrency"]),
            )
        return self._client

    def cache_key(self, prompt: str, image) -> str:
        record = {
            "base_url": public_url(self.base_url),
            "model": self.model,
            "prompt": prompt,
            "image_sha256": image_sha256(image),
            "settings": self.generation_settings(),
        }
        return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> str:
        return os.path.join(self.cache_dir, key[:2], f"{key}.json")

    def _cached(self, key: str) -> dict | None:
        try:
            with open(self._cache_path(key), encoding="utf-8") as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and isinstance(entry.get("answer"), str) else None

    def _store(self, key: str, entry: dict) -> None:
        from instructpart_dataset.toolbox.files import write_text_atomic

        path = self._cache_path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_text_atomic(path, json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")

    def _request_once(self, body: dict) -> dict:
        import httpx

        self._count(requests=1)
        try:
            response = self._http().post(f"{self.base_url}/chat/completions", json=body)
        except httpx.TimeoutException:
            raise _Failure(f"no answer within the {self.settings['timeout']} s timeout", retry=True) from None
        except httpx.TransportError as error:
            raise _Failure(f"connection failed: {self._redact(error) or type(error).__name__}", retry=True) from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Failure(f"HTTP {status}", retry=True, wait=_retry_after(response.headers.get("retry-after")))
        if status >= 400:
            raise _Failure(f"HTTP {status}: {self._redact(response.text)[:200]}", retry=False)
        try:
            data = response.json()
        except ValueError:
            raise _Failure("the response is not JSON", retry=False) from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not choices or not isinstance(choices, list):
            raise _Failure("the response holds no choice", retry=False)
        message = choices[0].get("message") if isinstance(choices[0], dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):  # some servers answer in content parts
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if content is not None and not isinstance(content, str):
            raise _Failure("the response's message has no text content", retry=False)
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        tokens = {name: int(usage.get(name) or 0) for name in ("prompt_tokens", "completion_tokens")}
        return {"answer": (content or "").strip(), "usage": tokens}

    def _request(self, body: dict) -> dict:
        """The answer after at most `max_retries` retries; raises `_Failure` with the last reason."""
        attempt = 0
        while True:
            try:
                return self._request_once(body)
            except _Failure as failure:
                if not failure.retry or attempt >= self.settings["max_retries"]:
                    if failure.retry and attempt:
                        failure.reason += f" (after {attempt} retries)"
                    raise
                wait = failure.wait if failure.wait is not None else self.settings["backoff"] * 2**attempt
                time.sleep(min(wait, self.settings["max_backoff"]))
                attempt += 1
                self._count(retries=1)

    def _ask_one(self, image, prompt: str) -> VLMAnswer:
        shown = self.shown_size(image)
        key = self.cache_key(prompt, image)
        entry = self._cached(key)
        if entry is not None:
            self._count(cache_hits=1, **entry.get("usage", {}))
            return VLMAnswer(entry["answer"], shown, None)
        self._count(cache_misses=1)
        sent = resized_for_request(image, self.settings["longest_side"])
        buffer = io.BytesIO()
        sent.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        data_url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        body = {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": data_url}},
                        {"type": "text", "text": prompt},
                    ],
                }
            ],
            "max_tokens": self.settings["max_tokens"],
            "temperature": self.settings["temperature"],
        }
        try:
            entry = self._request(body)
        except _Failure as failure:
            self._count(failed_rows=1)
            return VLMAnswer("", shown, None, error=failure.reason)
        self._count(**entry["usage"])
        self._store(key, entry)
        return VLMAnswer(entry["answer"], shown, None)

    def ask(self, images: list, prompts: list) -> list:
        if len(images) <= 1 or self.settings["concurrency"] == 1:
            return [self._ask_one(image, prompt) for image, prompt in zip(images, prompts)]
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=self.settings["concurrency"], thread_name_prefix="api")
        return list(self._pool.map(self._ask_one, images, prompts))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __repr__(self):
        return f"ApiVLM({self.model!r} at {public_url(self.base_url)!r})"
