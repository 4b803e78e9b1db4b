"""Content parts (:mod:`llmproxy.types`) in OpenAI's wire forms.

Chat Completions (a user message's ``content`` becomes a list, in the parts' order):

- :class:`~llmproxy.types.Text`: ``{"type": "text", "text": ...}``
- :class:`~llmproxy.types.Image`: ``{"type": "image_url", "image_url": {"url": <the URL or a
  data: URL of the bytes>, "detail": ...}}`` (``detail`` only when the part sets it)
- :class:`~llmproxy.types.Document`: ``{"type": "file", "file": {"file_data": <data: URL>,
  "filename": ...}}`` or ``{"type": "file", "file": {"file_id": ...}}``
- :class:`~llmproxy.types.Audio`: ``{"type": "input_audio", "input_audio": {"data": <base64>,
  "format": "wav" | "mp3"}}``

The Responses API (a message item's ``content``):

- Text: ``{"type": "input_text", "text": ...}``
- Image: ``{"type": "input_image", "image_url": ..., "detail": <the part's, else "auto">}``
  (the SDK's type requires ``detail``)
- Document: ``{"type": "input_file", "file_data": <data: URL>, "filename": ...}`` or
  ``{"type": "input_file", "file_id": ...}``
- Audio: not taken in a Responses message (the SDK's message content types have no audio part):
  an :class:`~llmproxy.errors.InvalidRequest` naming the part.

Only user messages carry images, documents and audio; a system, assistant or tool message
with parts is sent as its text (``content``), and one with a non-text part is refused. Every
refusal names the part by its index path (``messages[1].parts[2]``) before anything is sent.
"""

from __future__ import annotations

from typing import Any

from llmproxy.errors import InvalidRequest
from llmproxy.types import Audio, Document, Image, Message, Part, Text

__all__ = ["AUDIO_FORMATS", "chat_content", "chat_part", "responses_content", "responses_part"]

#: The audio formats OpenAI's ``input_audio`` takes.
AUDIO_FORMATS: frozenset[str] = frozenset(("wav", "mp3"))


def _filename(part: Document) -> str:
    if part.filename:
        return part.filename
    return "document.pdf" if part.media_type == "application/pdf" else "document"


def _audio_format(part: Audio, where: str) -> str:
    fmt = part.format or ""
    if fmt not in AUDIO_FORMATS:
        raise InvalidRequest(
            f"{where}: OpenAI takes wav or mp3 audio, this part is {fmt or 'of unknown format'};"
            " convert it first",
            field=f"{where}.format",
        )
    return fmt


def chat_part(part: Part, where: str = "parts[0]") -> dict[str, Any]:
    """Return the Chat Completions form of one part; ``where`` names it in errors.

    >>> chat_part(Text("Hi"))
    {'type': 'text', 'text': 'Hi'}
    """
    if isinstance(part, Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, Image):
        image: dict[str, Any] = {"url": part.data_url()}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if isinstance(part, Document):
        if part.file_id is not None:
            return {"type": "file", "file": {"file_id": part.file_id}}
        return {
            "type": "file",
            "file": {"file_data": part.data_url(), "filename": _filename(part)},
        }
    if isinstance(part, Audio):
        return {
            "type": "input_audio",
            "input_audio": {"data": part.base64(), "format": _audio_format(part, where)},
        }
    raise InvalidRequest(f"{where} is a {type(part).__name__}, not a content part", field=where)


def responses_part(part: Part, where: str = "parts[0]") -> dict[str, Any]:
    """Return the Responses API form of one part; ``where`` names it in errors.

    >>> responses_part(Text("Hi"))
    {'type': 'input_text', 'text': 'Hi'}
    """
    if isinstance(part, Text):
        return {"type": "input_text", "text": part.text}
    if isinstance(part, Image):
        return {
            "type": "input_image",
            "image_url": part.data_url(),
            "detail": part.detail or "auto",
        }
    if isinstance(part, Document):
        if part.file_id is not None:
            return {"type": "input_file", "file_id": part.file_id}
        return {"type": "input_file", "file_data": part.data_url(), "filename": _filename(part)}
    if isinstance(part, Audio):
        raise InvalidRequest(
            f"{where} is audio, which OpenAI's Responses API does not take in a message; send it"
            " through Chat Completions (the provider's api option 'chat' or 'auto' without"
            " hosted tools)",
            field=where,
        )
    raise InvalidRequest(f"{where} is a {type(part).__name__}, not a content part", field=where)


def _text_only(m: Message, where: str) -> str:
    """The text of a non-user message with parts; a non-text part there is refused."""
    for index, part in enumerate(m.parts):
        if not isinstance(part, Text):
            path = f"{where}.parts[{index}]"
            raise InvalidRequest(
                f"{path}: only user messages may carry an {type(part).__name__.lower()}"
                f" ({m.role} messages take text)",
                field=path,
            )
    return m.content


def chat_content(m: Message, where: str) -> str | list[dict[str, Any]]:
    """The Chat Completions ``content`` of a message with parts (``where``: ``messages[i]``)."""
    if m.role != "user":
        return _text_only(m, where)
    return [chat_part(p, f"{where}.parts[{i}]") for i, p in enumerate(m.parts)]


def responses_content(m: Message, where: str) -> str | list[dict[str, Any]]:
    """The Responses API ``content`` of a message item with parts (``where``: ``messages[i]``)."""
    if m.role != "user":
        return _text_only(m, where)
    return [responses_part(p, f"{where}.parts[{i}]") for i, p in enumerate(m.parts)]
