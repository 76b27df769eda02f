"""The fakes' outputs are real files with their real content types, large ones included."""

from __future__ import annotations

import hashlib
import io
import struct
import wave

import aiohttp

from tests.integration.conftest import StartFake, auth, eventually
from vendors_fake import FaultProfile, OutputSpec, expected_file
from vendors_fake.outputs import make_files

MIB = 1024 * 1024


def boxes(data: bytes) -> list[tuple[str, int]]:
    """The top-level ISO BMFF boxes of an MP4: (type, size)."""
    found, pos = [], 0
    while pos < len(data):
        size, kind = struct.unpack(">I4s", data[pos : pos + 8])
        found.append((kind.decode(), size))
        pos += size
    assert pos == len(data)
    return found


def test_a_video_is_an_iso_media_file_of_the_drawn_size() -> None:
    (video,) = make_files({"prompt": "p"}, OutputSpec(kind="video"), 1, 100_000)
    data = video.read()
    assert len(data) == video.size == 100_000
    assert [kind for kind, _ in boxes(data)] == ["ftyp", "moov", "mdat"]
    assert data[8:12] == b"isom"


def test_audio_is_a_wave_file() -> None:
    (audio,) = make_files({"prompt": "p"}, OutputSpec(kind="audio"), 1, 32_044)
    with wave.open(io.BytesIO(audio.read())) as parsed:
        assert (parsed.getframerate(), parsed.getsampwidth(), parsed.getnchannels()) == (
            16000,
            2,
            1,
        )
        assert parsed.getnframes() == 16_000  # one second


async def test_a_60_mib_video_streams_with_its_type_and_length(start_fake: StartFake) -> None:
    size = {"kind": "fixed", "seconds": 60 * MIB}
    profile = FaultProfile(outputs={"*video*": OutputSpec(kind="video", size=size)})
    fake = await start_fake("replicate", profile)
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{fake.url}/v1/models/minimax/video-01/predictions",
            json={"input": {"prompt": "a long shot"}},
            headers={**auth("replicate"), "Prefer": "wait=5"},
        ) as r:
            url = (await r.json())["output"]
        digest, received = hashlib.sha256(), 0
        async with http.get(url) as response:
            assert response.content_type == "video/mp4"
            assert response.content_length == 60 * MIB
            async for chunk in response.content.iter_chunked(MIB):
                digest.update(chunk)
                received += len(chunk)
    assert received == 60 * MIB
    expected = expected_file({"prompt": "a long shot"}, "video", 0, 60 * MIB)
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
    await eventually(lambda: fake.snapshot()["tasks"]["delivered"] == 1)


async def test_a_download_cut_short_is_not_delivered(start_fake: StartFake) -> None:
    size = {"kind": "fixed", "seconds": 8 * MIB}
    fake = await start_fake("fal", FaultProfile(outputs={"*": OutputSpec(kind="video", size=size)}))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{fake.url}/fal-ai/veo", json={}, headers=auth("fal")) as r:
            request = await r.json()
        await eventually(lambda: fake.snapshot()["tasks"]["succeeded"] == 1)
        async with http.get(request["response_url"], headers=auth("fal")) as r:
            url = (await r.json())["video"]["url"]
        async with http.get(url) as response:
            await response.content.read(MIB)  # and hang up
    stats = fake.snapshot()["tasks"]
    assert (stats["billable"], stats["delivered"]) == (1, 0)
