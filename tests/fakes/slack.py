"""A fake Slack incoming webhook on 127.0.0.1 that validates messages like the real one.

Checks the Block Kit limits (https://api.slack.com/reference/block-kit/blocks) and answers as
Slack does: 200 ``ok``, 400 ``invalid_payload`` / ``invalid_blocks``, 404 ``no_service``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.server import LocalServer

__all__ = ["FakeSlack", "validate_message"]

WEBHOOK_PATH = "/services/T0000000/B0000000/XXXXXXXXXXXXXXXXXXXXXXXX"
_TEXT_TYPES = ("plain_text", "mrkdwn")


def _text_object(obj: Any, where: str, limit: int, *, plain: bool = False) -> list[str]:
    if not isinstance(obj, dict) or obj.get("type") not in _TEXT_TYPES:
        return [f"{where} must be a text object"]
    if plain and obj["type"] != "plain_text":
        return [f"{where} must be plain_text"]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return [f"{where}.text must be a non-empty string"]
    if len(text) > limit:
        return [f"{where}.text must be at most {limit} characters"]
    return []


def _block(block: Any, where: str) -> list[str]:
    if not isinstance(block, dict):
        return [f"{where} must be an object"]
    kind = block.get("type")
    if kind == "header":
        return _text_object(block.get("text"), f"{where}.text", 150, plain=True)
    if kind == "section":
        errors = []
        if "text" not in block and "fields" not in block:
            errors.append(f"{where} needs text or fields")
        if "text" in block:
            errors += _text_object(block["text"], f"{where}.text", 3000)
        fields = block.get("fields", [])
        if not isinstance(fields, list) or len(fields) > 10:
            errors.append(f"{where}.fields must be a list of at most 10")
        else:
            for i, f in enumerate(fields):
                errors += _text_object(f, f"{where}.fields[{i}]", 2000)
        return errors
    if kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
            return [f"{where}.elements must be a list of 1 to 10"]
        return [e for i, el in enumerate(elements) for e in _text_object(el, f"{where}[{i}]", 3000)]
    if kind == "divider":
        return []
    return [f"{where}.type {kind!r} is not supported here"]


def validate_message(message: Any) -> tuple[str, list[str]]:
    """Slack's error code and the problems for ``message``; ``("ok", [])`` when valid."""
    if not isinstance(message, dict):
        return "invalid_payload", ["body must be a JSON object"]
    text, blocks = message.get("text"), message.get("blocks")
    if text is None and blocks is None:
        return "no_text", ["text or blocks is required"]
    if text is not None and not isinstance(text, str):
        return "invalid_payload", ["text must be a string"]
    if blocks is None:
        return "ok", []
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= 50:
        return "invalid_blocks", ["blocks must be a list of 1 to 50"]
    errors = [e for i, b in enumerate(blocks) for e in _block(b, f"blocks[{i}]")]
    return ("invalid_blocks", errors) if errors else ("ok", [])


@dataclass
class FakeSlack(LocalServer):
    """Serve one incoming webhook; ``webhook_url`` (token in the path) is the secret to use."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[tuple[str, list[str]]] = field(default_factory=list)
    unavailable: bool = False

    @property
    def webhook_url(self) -> str:
        return f"{self.base_url}{WEBHOOK_PATH}"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.*}", self._post)

    async def _post(self, request: web.Request) -> web.Response:
        if request.path != WEBHOOK_PATH:
            return web.Response(status=404, text="no_service")
        if self.unavailable:
            return web.Response(status=500, text="rollup_error")
        try:
            message = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        code, errors = validate_message(message)
        if code != "ok":
            self.rejected.append((code, errors))
            return web.Response(status=400, text=code)
        self.messages.append(message)
        return web.Response(text="ok")
