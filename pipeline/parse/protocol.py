"""The sandbox wire format: length-prefixed frames of JSON or raw bytes over pipes (no pickle).

A request is two frames, a JSON header ``{"media_type", "max_pages", "timeout_s", "ocr",
"ocr_budget", "hold" | "held"}`` (``ocr``: the OCR settings or null) then the
document's bytes. ``"hold": key`` asks the child to keep the bytes after replying; ``"held": key``
sends none (an empty frame) and parses the bytes kept under that key. A reply is one JSON frame:
``{"ok": <document>}`` or ``{"error": <class name>, "message": <text>}``. The child sends
``{"ready": pid}`` once at start.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from docpipe import errors
from docpipe.types import Block, ParsedDocument

HEADER = struct.Struct("!Q")  # frame length in bytes, unsigned 64-bit big-endian
READ_CHUNK = 1 << 20  # bytes per read() call
OUT_OF_MEMORY = "MemoryError"  # error name the child sends after a MemoryError

# Error classes a child may name in a reply; any other name comes back as CorruptDocument.
ERRORS: dict[str, type[errors.DocpipeError]] = {
    cls.__name__: cls
    for cls in (
        errors.DocpipeError,
        errors.PermanentError,
        errors.UnsupportedType,
        errors.EncryptedDocument,
        errors.CorruptDocument,
        errors.EmptyDocument,
        errors.TooLarge,
        errors.ParserCrashed,
        errors.RetryableError,
        errors.ConfigError,
    )
}


def encode_json(obj: Any) -> bytes:
    """UTF-8 JSON; any stray surrogate becomes "?" rather than failing the reply."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")


def frame(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def document_to_json(doc: ParsedDocument) -> dict[str, Any]:
    return {
        "page_count": doc.page_count,
        "title": doc.title,
        "warnings": doc.warnings,
        "blocks": [[b.text, b.page, list(b.heading_path), b.is_heading, b.ocr_confidence] for b in doc.blocks],
        "parsed_to": doc.parsed_to,
        "ocr_pending": doc.ocr_pending,
    }


def document_from_json(obj: dict[str, Any]) -> ParsedDocument:
    blocks = [
        Block(text=text, page=page, heading_path=tuple(path), is_heading=is_heading, ocr_confidence=confidence)
        for text, page, path, is_heading, confidence in obj["blocks"]
    ]
    return ParsedDocument(
        blocks=blocks,
        page_count=obj["page_count"],
        title=obj["title"],
        warnings=obj["warnings"],
        parsed_to=obj.get("parsed_to"),
        ocr_pending=obj.get("ocr_pending", []),
    )


def error_from_reply(name: str, message: str) -> errors.DocpipeError:
    """The error a child reported, as the same class from ``docpipe.errors`` when it is one."""
    cls = ERRORS.get(name)
    return cls(message) if cls else errors.CorruptDocument(f"{name}: {message}")


def read_exact(fd: int, size: int) -> bytes | None:
    """Exactly ``size`` bytes from a blocking fd; None on end of file before the first byte."""
    parts, left = [], size
    while left:
        chunk = os.read(fd, min(left, READ_CHUNK))
        if not chunk:
            if left == size:
                return None
            raise EOFError(f"pipe closed after {size - left} of {size} bytes")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_frame(fd: int) -> bytes | None:
    """One frame's payload from a blocking fd; None on a clean end of file."""
    header = read_exact(fd, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    return read_exact(fd, size) if size else b""


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to a blocking fd."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
