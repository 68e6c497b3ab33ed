"""Finding base64 images in hook payloads, so they can move out of the record into the image store.

An image is recognised (as upstream 0.9.30's hooks do) by a ``data:image/...;base64,`` URL, by the
base64 signatures of PNG (``iVBORw0KGgo``) and JPEG (``/9j/``), or by the fields
``image_data``/``imageData``/``imageBase64``/``image_base64`` anywhere in the payload; and its
decoded bytes must start with a PNG, JPEG, GIF or WebP signature. A data URL inside a longer text
(a Markdown ``![shot](data:image/png;base64,...)``, a tool's output quoting one) moves too, and
the placeholder takes its place in the text: left there, its base64 would fill the record's
text, be cut off at the field's limit (losing the image anyway) and be indexed as words. Bare
base64 inside text is left alone: without the data URL's prefix nothing says where it starts.
``image_path``/``imagePath`` name a file: the server reads it only when it lies under the data directory or
``AGENTMEMORY_IMPORT_ROOT`` (a client never makes the server read an arbitrary file). Each image
is replaced in the payload by a short placeholder naming its sha256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_FIELDS = frozenset({"image_data", "imageData", "imageBase64", "image_base64"})
PATH_FIELDS = frozenset({"image_path", "imagePath"})
BASE64_SIGNATURES = ("iVBORw0KGgo", "/9j/")
_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+);base64,", re.IGNORECASE)
_BASE64 = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}\s*$")
# A data URL inside text: it ends where the base64 alphabet does.
_EMBEDDED_DATA_URL = re.compile(r"data:(image/[A-Za-z0-9.+-]+);base64,([A-Za-z0-9+/]+={0,2})", re.IGNORECASE)
MIN_BASE64_CHARS = 64  # shorter strings that happen to start like a PNG are not worth a file
MAX_DEPTH = 16
PLACEHOLDER = re.compile(r"\[image sha256:[0-9a-f]{64} [^\]]*\]")


def sniff(data: bytes) -> str | None:
    """The image type of ``data`` by its signature, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@dataclass(frozen=True)
class FoundImage:
    id: str  # sha256 of the bytes
    mime: str
    data: bytes
    path: str  # where in the payload it was


@dataclass
class Extraction:
    payload: Any
    images: list[FoundImage] = field(default_factory=list)

    @property
    def refs(self) -> list[dict[str, Any]]:
        """The observation's references, one per distinct image."""
        seen: dict[str, dict[str, Any]] = {}
        for image in self.images:
            seen.setdefault(
                image.id, {"id": image.id, "mime": image.mime, "bytes": len(image.data), "field": image.path}
            )
        return list(seen.values())


def _decode(text: str, *, image_field: bool = False) -> bytes | None:
    """The bytes of a data URL or base64 string when they are an image (a string outside an
    image field must carry a PNG or JPEG signature to be tried)."""
    body = text.strip()
    match = _DATA_URL.match(body)
    if match:
        body = body[match.end() :]
    elif not (image_field or body.startswith(BASE64_SIGNATURES)) or len(body) < MIN_BASE64_CHARS:
        return None
    if not _BASE64.match(body[:4096]):
        return None
    try:
        data = base64.b64decode(body, validate=False)
    except (binascii.Error, ValueError):
        return None
    return data if sniff(data) else None


def placeholder(image: FoundImage) -> str:
    return f"[image sha256:{image.id} {image.mime} {len(image.data)} bytes]"


def extract_images(payload: Any, read_file: Callable[[str], bytes | None] = lambda _p: None) -> Extraction:
    """``payload`` with every image replaced by a placeholder, and the images found.

    :param read_file: reads an ``image_path`` the caller allows, else None (then the path stays).
    """
    found = Extraction(payload=None)

    def take(data: bytes, path: str) -> str:
        image = FoundImage(hashlib.sha256(data).hexdigest(), sniff(data) or "application/octet-stream", data, path)
        found.images.append(image)
        return placeholder(image)

    def embedded(match: re.Match[str], path: str) -> str:
        data = _decode(match.group(0))
        return take(data, path) if data is not None else match.group(0)

    def walk(value: Any, path: str, key: str | None, depth: int) -> Any:
        if isinstance(value, str):
            if key in PATH_FIELDS:
                data = read_file(value)
                return take(data, path) if data and sniff(data) else value
            if key in IMAGE_FIELDS or value.startswith(("data:", "DATA:", *BASE64_SIGNATURES)):
                data = _decode(value, image_field=key in IMAGE_FIELDS)
                if data is not None:
                    return take(data, path)
            if ";base64," in value or ";BASE64," in value:  # a cheap test before the pattern
                return _EMBEDDED_DATA_URL.sub(lambda m: embedded(m, path), value)
            return value
        if depth >= MAX_DEPTH:
            return value
        if isinstance(value, dict):
            return {k: walk(v, f"{path}.{k}" if path else str(k), str(k), depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{path}[{i}]", None, depth + 1) for i, v in enumerate(value)]
        return value

    found.payload = walk(payload, "", None, 0)
    return found


def confined_reader(roots: list[Path], max_bytes: int) -> Callable[[str], bytes | None]:
    """Reads a file only when it resolves under one of ``roots`` and is at most ``max_bytes``.
    The roots are resolved on the first read: most payloads name no file, and resolving costs a
    system call per path component on every observation."""
    resolved: list[Path] = []

    def read(name: str) -> bytes | None:
        try:
            path = Path(name).expanduser().resolve()
            resolved[:] = resolved or [r.expanduser().resolve() for r in roots]
        except (OSError, RuntimeError, ValueError):
            return None
        if not any(path.is_relative_to(root) for root in resolved):
            return None
        try:
            if not path.is_file() or path.stat().st_size > max_bytes:
                return None
            return path.read_bytes()
        except OSError:
            return None

    return read


_WORD = re.compile(r"[A-Za-z0-9]{2,}")
_LABEL_KEYS = frozenset({"tool_name", "toolName", "type", "media_type", "mime", "mimeType", "hookType"})


def modality(payload: Any, images: list[FoundImage]) -> str | None:
    """``image`` when the event carries images and no other text, ``mixed`` when it has text too
    (labels such as the tool name do not count), None without images."""
    if not images:
        return None

    def has_text(value: Any, key: str | None, depth: int) -> bool:
        if isinstance(value, str):
            return key not in _LABEL_KEYS and bool(_WORD.search(PLACEHOLDER.sub("", value)))
        if depth >= MAX_DEPTH:
            return False
        if isinstance(value, dict):
            return any(has_text(v, str(k), depth + 1) for k, v in value.items())
        if isinstance(value, list):
            return any(has_text(v, None, depth + 1) for v in value)
        return False

    return "mixed" if has_text(payload, None, 0) else "image"
