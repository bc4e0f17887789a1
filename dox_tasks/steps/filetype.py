"""File type by magic bytes, never by name.

A PNG renamed ``.pdf`` is caught here (``type_mismatch``); a real PNG when only
PDF is allowed is ``type_not_allowed``.
"""

from __future__ import annotations

from pathlib import PurePath

# (type, offset, magic). PDF may have up to 1 KiB of junk before %PDF- (readers accept it).
_MAGIC: list[tuple[str, bytes]] = [
    ("png", b"\x89PNG\r\n\x1a\n"),
    ("jpeg", b"\xff\xd8\xff"),
    ("gif", b"GIF8"),
    ("tiff", b"II*\x00"),
    ("tiff", b"MM\x00*"),
    ("zip", b"PK\x03\x04"),
    ("gzip", b"\x1f\x8b"),
    ("elf", b"\x7fELF"),
    ("exe", b"MZ"),
]

EXTENSIONS: dict[str, str] = {
    ".pdf": "pdf",
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".gif": "gif",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".zip": "zip",
    ".gz": "gzip",
    ".txt": "text",
}

#: The media type a detected type is served as (``GET /api/v1/workflows/{id}/document``).
MEDIA_TYPES: dict[str, str] = {
    "pdf": "application/pdf",
    "png": "image/png",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "tiff": "image/tiff",
    "zip": "application/zip",
    "gzip": "application/gzip",
    "text": "text/plain",
}
UNKNOWN_MEDIA_TYPE = "application/octet-stream"


def sniff(head: bytes) -> str:
    """The type of a document from its first bytes (``unknown`` if none matches)."""
    if b"%PDF-" in head[:1024]:
        return "pdf"
    for kind, magic in _MAGIC:
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unknown"


def claimed_type(file_name: str | None) -> str | None:
    """The type a file name claims by its extension, if it claims one we know."""
    if not file_name:
        return None
    return EXTENSIONS.get(PurePath(file_name).suffix.lower())
