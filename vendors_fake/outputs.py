"""What a fake vendor's task produces: real bytes with their real content types.

Each output file is derived from the task's input (and its index), so a test can compute
what jobline should have stored (:func:`expected_file`). Files are generated as they are
served, in chunks, so a 60 MiB video costs a few 64 KiB blocks of memory:

- ``image``: an 8x8 PNG (:func:`vendors_fake.png.expected_png`), ``image/png``;
- ``video``: an ISO BMFF file (``ftyp`` ``isom``, a ``moov`` with an ``mvhd``, then an
  ``mdat`` filling it to the drawn size), ``video/mp4``;
- ``audio``: a RIFF/WAVE file, 16 kHz 16-bit mono PCM, ``audio/wav``;
- ``json`` and ``text`` outputs are no files: they are part of the result itself.

Small files can be answered as ``data:`` URIs instead of URLs (fal's ``sync_mode``,
replicate's sync API); larger ones than :data:`MAX_DATA_URI_BYTES` stay URLs.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vendors_fake.png import CANONICAL, expected_png, png_of_canonical
from vendors_fake.profile import OutputSpec

CHUNK = 64 * 1024
MAX_DATA_URI_BYTES = 2 * 1024 * 1024
DATA_URIS_KEPT_BYTES = 16 * 1024 * 1024  # a vendor's data URIs kept encoded
_MP4_HEAD = 32 + 116 + 8  # ftyp + moov(mvhd) + the mdat header
_WAV_HEAD = 44
CONTENT_TYPES = {"image": "image/png", "video": "video/mp4", "audio": "audio/wav"}
EXTENSIONS = {"image": "png", "video": "mp4", "audio": "wav"}


@dataclass(frozen=True, slots=True)
class OutputFile:
    """One file of a task's output, generated on demand."""

    name: str  # the file name in its URL
    kind: str  # image | video | audio
    content_type: str
    size: int
    input: str  # the task's input as canonical JSON: the bytes derive from it
    index: int

    def chunks(self, chunk: int = CHUNK) -> Iterator[bytes]:
        """The file's bytes, in order, at most ``chunk`` bytes at a time."""
        if self.kind == "image":
            data = _png(self.input, self.index)
            for start in range(0, len(data), chunk):
                yield data[start : start + chunk]
            return
        head = _mp4_head(self.size) if self.kind == "video" else _wav_head(self.size)
        yield head
        seed = f"{self.kind}:{self.index}:{self.input}".encode()
        block = hashlib.shake_256(seed).digest(chunk)
        left = self.size - len(head)
        while left > 0:
            piece = block[: min(left, chunk)]
            left -= len(piece)
            yield piece

    def read(self) -> bytes:
        return b"".join(self.chunks())

    def data_uri(self) -> str:
        encoded = base64.b64encode(self.read()).decode("ascii")
        return f"data:{self.content_type};base64,{encoded}"


class DataUris:
    """The data URIs of the files asked for last, JSON-encoded (a data URI needs no
    escapes), up to ``budget`` bytes in all: a status read, a list page and a webhook may
    each carry one (up to 2.7 MB), base64-encoded once."""

    def __init__(self, budget: int = DATA_URIS_KEPT_BYTES) -> None:
        self.budget = budget
        self.size = 0
        self._kept: dict[OutputFile, bytes] = {}  # oldest first

    def json(self, file: OutputFile) -> bytes:
        """``json.dumps(file.data_uri()).encode()``."""
        kept = self._kept.get(file)
        if kept is None:
            encoded = base64.b64encode(file.read())
            kept = b'"data:%s;base64,%s"' % (file.content_type.encode(), encoded)
            self._kept[file] = kept
            self.size += len(kept)
            while self.size > self.budget and len(self._kept) > 1:
                self.size -= len(self._kept.pop(next(iter(self._kept))))
        return kept

    def clear(self) -> None:
        self._kept.clear()
        self.size = 0


def _canonical(input: dict[str, Any]) -> str:
    return CANONICAL.encode(input)


@functools.lru_cache(maxsize=1024)  # a task's files are sized when it ends, then served
def _png(canonical: str, index: int) -> bytes:
    """Image 0 is ``expected_png(input)``; image i > 0 that of the input plus ``_output: i``."""
    if index == 0:
        return png_of_canonical(canonical)
    return expected_png({**json.loads(canonical), "_output": index})


def make_files(input: dict[str, Any], spec: OutputSpec, count: int, size: int) -> list[OutputFile]:
    """The files a successful task of ``spec`` produces (none for json and text)."""
    if spec.kind not in CONTENT_TYPES:
        return []
    canonical = _canonical(input)
    ext = EXTENSIONS[spec.kind]
    if spec.kind == "image":
        return [
            OutputFile(
                f"image-{i}.{ext}", "image", "image/png", len(_png(canonical, i)), canonical, i
            )
            for i in range(count)
        ]
    head = _MP4_HEAD if spec.kind == "video" else _WAV_HEAD
    size = max(size, head + 2)
    size -= (size - head) % 2  # whole 16-bit samples for audio; harmless for video
    name = f"{spec.kind}.{ext}"
    return [OutputFile(name, spec.kind, CONTENT_TYPES[spec.kind], size, canonical, 0)]


def expected_file(
    input: dict[str, Any], kind: str = "image", index: int = 0, size: int = 0
) -> bytes:
    """The bytes the fake serves for output ``index`` of ``kind`` of a task with ``input``
    (``size``: the file size the task drew, for video and audio)."""
    spec = OutputSpec.model_validate({"kind": kind})
    files = make_files(input, spec, index + 1, size)
    return files[index].read()


def inline_result(input: dict[str, Any], kind: str) -> Any:
    """The JSON (``json``) or text (``text``) output of a task with ``input``."""
    digest = hashlib.sha256(f"{kind}:{_canonical(input)}".encode()).hexdigest()[:12]
    prompt = str(input.get("prompt", ""))
    if kind == "text":
        return f"A fake answer {digest} to: {prompt}"
    return {"answer": f"fake {digest}", "prompt": prompt, "scores": [0.25, 0.5, 0.25]}


def _mp4_head(size: int) -> bytes:
    ftyp = struct.pack(
        ">I4s4sI4s4s4s4s", 32, b"ftyp", b"isom", 0x200, b"isom", b"iso2", b"avc1", b"mp41"
    )
    matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    mvhd_body = (
        struct.pack(">IIIIIIH", 0, 0, 0, 1000, 1000, 0x10000, 0x0100)
        + b"\x00" * 10
        + matrix
        + b"\x00" * 24
        + struct.pack(">I", 2)
    )
    mvhd = struct.pack(">I4s", 8 + len(mvhd_body), b"mvhd") + mvhd_body
    moov = struct.pack(">I4s", 8 + len(mvhd), b"moov") + mvhd
    mdat = struct.pack(">I4s", size - len(ftyp) - len(moov), b"mdat")
    return ftyp + moov + mdat


def _wav_head(size: int) -> bytes:
    data = size - _WAV_HEAD
    rate, bits, channels = 16000, 16, 1
    return (
        struct.pack("<4sI4s", b"RIFF", size - 8, b"WAVE")
        + struct.pack(
            "<4sIHHIIHH",
            b"fmt ",
            16,
            1,
            channels,
            rate,
            rate * channels * bits // 8,
            channels * bits // 8,
            bits,
        )
        + struct.pack("<4sI", b"data", data)
    )
