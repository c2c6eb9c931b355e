"""Ask a vision-language model (any OpenAI-compatible ``/v1/chat/completions`` endpoint).

Cosmos Reason on NIM or vLLM, Qwen-VL behind vLLM, or a hosted model all speak the same
protocol: a ``messages`` list whose user content holds a text part and an ``image_url`` part
with the rendered map as a base64 ``data:image/png`` URL. The measured facts travel in the
prompt so the model reasons from the same numbers as the grounded answer, and its reply is
shown *beside* the grounded answer, never instead of it: a timeout, an HTTP error or a
malformed reply raises :class:`VLMError`, which the commands turn into a warning while the
offline answer stands.

``FABSIGHT_VLM_API_KEY`` in the environment is sent as a bearer token (NIM and hosted
endpoints need one; a local vLLM does not).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fabsight.types import WaferMap

IMAGE_SIZE = 448
GAP = 8

SYSTEM_PROMPT = (
    "You are a semiconductor yield engineer reviewing wafer maps. The image shows wafer maps as die "
    "grids: failing dies are red, good dies grey, off-wafer white. Measured facts computed from the "
    "same maps are given as JSON (sectors are compass directions with the notch at south); trust them "
    "over visual impressions for counts, and say so when they do not support a claim."
)


class VLMError(Exception):
    """The endpoint could not give an answer (timeout, HTTP error, malformed reply)."""


@dataclass(frozen=True)
class VLMConfig:
    url: str
    model: str
    timeout: float = 60.0
    max_tokens: int = 512

    @property
    def endpoint(self) -> str:
        """The chat-completions URL, whether the user gave the server root, ``…/v1`` or the full path."""
        url = self.url.rstrip("/")
        if url.endswith("/chat/completions"):
            return url
        if url.endswith("/v1"):
            return f"{url}/chat/completions"
        return f"{url}/v1/chat/completions"


def png_bytes(maps: WaferMap | Sequence[WaferMap], size: int = IMAGE_SIZE) -> bytes:
    """One map, or several side by side in a near-square grid, as a PNG of ``size``-pixel tiles.

    The fast palette picture (:func:`fabsight.report.render.map_to_rgb`: red fails, grey good,
    white off-wafer), the same one :mod:`fabsight.assist.sft` writes for fine-tuning, so a
    model tuned on exported data sees the same kind of picture when it is asked.
    """
    from PIL import Image

    from fabsight.report.render import map_to_rgb

    maps = [maps] if isinstance(maps, WaferMap) else list(maps)
    cols = math.ceil(math.sqrt(len(maps)))
    rows = math.ceil(len(maps) / cols)
    sheet = np.full((rows * (size + GAP) - GAP, cols * (size + GAP) - GAP, 3), 255, dtype=np.uint8)
    for i, m in enumerate(maps):
        r, c = divmod(i, cols)
        sheet[r * (size + GAP): r * (size + GAP) + size, c * (size + GAP): c * (size + GAP) + size] = map_to_rgb(
            m.grid, size)
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="PNG")
    return buf.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def build_request(config: VLMConfig, png: bytes, question: str, facts: Any) -> dict[str, Any]:
    """The chat-completions request body: system prompt, then the question + facts + image."""
    text = f"{question}\n\nMeasured facts (JSON):\n{json.dumps(facts, default=str, separators=(',', ':'))}"
    return {
        "model": config.model,
        "max_tokens": config.max_tokens,
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": text},
                    {"type": "image_url", "image_url": {"url": data_url(png)}},
                ],
            },
        ],
    }


def _reply_text(body: Any) -> str:
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise VLMError("reply has no choices[0].message.content") from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise VLMError("reply content is empty")
    return content.strip()


def ask_vlm(config: VLMConfig, png: bytes, question: str, facts: Any) -> dict[str, Any]:
    """Send one question with the map picture and facts; ``{"model", "endpoint", "answer"}``."""
    import httpx

    headers = {"Content-Type": "application/json"}
    key = os.environ.get("FABSIGHT_VLM_API_KEY")
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        resp = httpx.post(config.endpoint, json=build_request(config, png, question, facts), headers=headers,
                          timeout=config.timeout)
    except httpx.TimeoutException:
        raise VLMError(f"no reply within {config.timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise VLMError(f"request failed ({type(exc).__name__}: {exc})") from None
    if resp.status_code != 200:
        raise VLMError(f"HTTP {resp.status_code}: {resp.text[:200]}")
    try:
        body = resp.json()
    except ValueError:
        raise VLMError("reply is not JSON") from None
    return {"model": config.model, "endpoint": config.endpoint, "answer": _reply_text(body)}


def ask_or_fallback(config: VLMConfig | None, png: bytes | None, question: str, facts: Any,
                    warn: Any) -> dict[str, Any] | None:
    """:func:`ask_vlm`, but a failure is reported through ``warn`` and recorded, not raised."""
    if config is None or png is None:
        return None
    try:
        return ask_vlm(config, png, question, facts)
    except VLMError as exc:
        warn(f"VLM at {config.endpoint} failed: {exc}; showing the offline answer only")
        return {"model": config.model, "endpoint": config.endpoint, "error": str(exc)}
