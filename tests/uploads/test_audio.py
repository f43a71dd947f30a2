"""inspect_audio on real files made at test time (tests/audio_factory.py); no mocks."""

from __future__ import annotations

import io
import json
import random
import zipfile
from pathlib import Path
from typing import BinaryIO, cast

import pytest

from app.uploads import audio
from app.uploads.audio import (
    READ_BUDGET_BYTES,
    AudioFacts,
    UnsupportedAudio,
    inspect_audio,
    sniff_head,
)
from tests.audio_factory import KINDS, make_audio, make_png, missing_encoder

SECONDS = 3.0


class CountingReader(io.RawIOBase):
    """A real file, counting the bytes handed out, as the chunk-concatenating stream would."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._file = path.open("rb")
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        self.bytes_read += len(data)
        return len(data)

    def close(self) -> None:
        self._file.close()
        super().close()


class ChunkedReader(CountingReader):
    """The file split into chunk files, read back as one stream whose reads stop at chunk
    boundaries, like the staging area's concatenating stream may."""

    def __init__(self, path: Path, chunk_size: int) -> None:
        super().__init__(path)
        self._chunk_size = chunk_size

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        room = self._chunk_size - self.tell() % self._chunk_size
        return super().readinto(memoryview(buffer)[: min(len(buffer), room)])


def inspect_path(path: Path, name: str | None = None, **kwargs: object) -> AudioFacts:
    with CountingReader(path) as stream:
        return inspect_audio(cast(BinaryIO, stream), name or path.name, **kwargs)  # type: ignore[arg-type]


def need(kind: str) -> None:
    reason = missing_encoder(kind)
    if reason is not None:
        pytest.skip(reason)


class _MadeOnDemand(dict[str, Path]):
    def __init__(self, root: Path) -> None:
        super().__init__()
        self._root = root

    def __missing__(self, kind: str) -> Path:
        need(kind)
        channels = 1 if kind.startswith("amr") else 2
        path = make_audio(
            kind, self._root / f"sample_{kind}{KINDS[kind].suffix}", SECONDS, channels=channels
        )
        self[kind] = path
        return path


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """3-second stereo (mono for AMR) files, one per kind, made on first use and shared."""
    return _MadeOnDemand(tmp_path_factory.mktemp("audio"))


# kind -> format, content_type, codec, sample_rate, channels
EXPECTED = {
    "mp3": ("mp3", "audio/mpeg", "mp3", 44100, 2),
    "mp2": ("mp2", "audio/mpeg", "mp2", 44100, 2),
    "wav": ("wav", "audio/wav", "pcm_s16le", 44100, 2),
    "flac": ("flac", "audio/flac", "flac", 44100, 2),
    "ogg": ("ogg_vorbis", "audio/ogg", "vorbis", 44100, 2),
    "opus": ("ogg_opus", "audio/ogg", "opus", 48000, 2),
    "ogg_flac": ("ogg_flac", "audio/ogg", "flac", 44100, 2),
    "m4a": ("m4a", "audio/mp4", "aac", 44100, 2),
    "m4a_faststart": ("m4a", "audio/mp4", "aac", 44100, 2),
    "aac": ("aac", "audio/aac", "aac", 44100, 2),
    "webm": ("webm", "audio/webm", "opus", 48000, 2),
    "webm_live": ("webm", "audio/webm", "opus", 48000, 2),
    "mka": ("matroska", "audio/x-matroska", "vorbis", 44100, 2),
    "wav_streamed": ("wav", "audio/wav", "pcm_s16le", 44100, 2),
    "aiff": ("aiff", "audio/aiff", "pcm_s16be", 44100, 2),
    "amr": ("amr", "audio/amr", "amr_nb", 8000, 1),
    "amr_wb": ("amr_wb", "audio/amr-wb", "amr_wb", 16000, 1),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_each_format_is_accepted_with_its_facts(kind: str, made: dict[str, Path]) -> None:
    path = made[kind]
    fmt, content_type, codec, sample_rate, channels = EXPECTED[kind]

    with CountingReader(path) as stream:
        facts = inspect_audio(cast(BinaryIO, stream), path.name)
        read = stream.bytes_read

    assert (facts.format, facts.content_type, facts.codec) == (fmt, content_type, codec)
    assert (facts.sample_rate, facts.channels) == (sample_rate, channels)
    assert facts.duration_seconds == pytest.approx(SECONDS, rel=0.05)
    assert facts.bitrate is not None
    assert facts.bitrate > 0
    assert read <= READ_BUDGET_BYTES


@pytest.mark.parametrize(
    ("kind", "rate", "channels"),
    [
        ("mp3", 22050, 1),
        ("wav", 16000, 1),
        ("flac", 48000, 2),
        ("ogg", 22050, 1),
        ("aac", 48000, 1),
        ("m4a", 32000, 1),
        ("webm_live", 48000, 1),
        ("aiff", 8000, 1),
    ],
)
def test_speech_at_other_rates_and_layouts(
    kind: str, rate: int, channels: int, tmp_path: Path
) -> None:
    need(kind)
    path = make_audio(
        kind,
        tmp_path / f"speech{KINDS[kind].suffix}",
        4.5,
        sample_rate=rate,
        channels=channels,
        source="speech",
    )
    facts = inspect_path(path)
    assert (facts.sample_rate, facts.channels) == (rate, channels)
    assert facts.duration_seconds == pytest.approx(4.5, rel=0.05)


@pytest.mark.parametrize("kind", ["mp3", "m4a", "ogg", "webm_live", "flac", "aac", "wav"])
def test_stream_whose_reads_stop_at_chunk_boundaries(kind: str, made: dict[str, Path]) -> None:
    path = made[kind]
    with ChunkedReader(path, chunk_size=1000) as stream:
        facts = inspect_audio(cast(BinaryIO, stream), path.name)
    assert facts.format == EXPECTED[kind][0]
    assert facts.duration_seconds == pytest.approx(SECONDS, rel=0.05)


def test_stream_position_does_not_matter(made: dict[str, Path]) -> None:
    path = made["flac"]
    with path.open("rb") as stream:
        stream.seek(1234)
        assert inspect_audio(stream, path.name).format == "flac"


# --------------------------------------------------------------------- not audio


def _pdf() -> bytes:
    return (
        b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
        b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\ntrailer << /Root 1 0 R >>\n"
        b"%%EOF\n"
    )


def _zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("notes.txt", "not audio\n" * 200)
        archive.writestr("data.bin", random.Random(7).randbytes(4096))


FAKES = [
    "png",
    "zip",
    "random",
    "text",
    "pdf",
    "empty",
    "mpeg_sync_then_noise",
    "amr_magic_text",
    "riff_wave_without_chunks",
    "ogg_page_of_noise",
]


def _make_fake(kind: str, path: Path) -> Path:
    rng = random.Random(1234)
    if kind == "png":
        return make_png(path, 64, 64)
    if kind == "zip":
        _zip(path)
    elif kind == "random":
        path.write_bytes(rng.randbytes(256 * 1024))
    elif kind == "text":
        path.write_text("This is a text file pretending to be audio.\n" * 500)
    elif kind == "pdf":
        path.write_bytes(_pdf())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "mpeg_sync_then_noise":
        # A valid-looking first MPEG-1 layer III header, then noise: mutagen alone would
        # go hunting for frames further in.
        path.write_bytes(b"\xff\xfb\x90\x64" + rng.randbytes(64 * 1024))
    elif kind == "amr_magic_text":
        path.write_text("#!AMR\nhello, this is not a speech frame\n" * 20)
    elif kind == "riff_wave_without_chunks":
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVE" + rng.randbytes(2048))
    elif kind == "ogg_page_of_noise":
        path.write_bytes(b"OggS\x00\x02" + rng.randbytes(4096))
    return path


@pytest.mark.parametrize("fake", FAKES)
@pytest.mark.parametrize("name", ["upload.mp3", "upload.wav", "upload.m4a", "upload.amr"])
def test_fakes_named_as_audio_are_refused(fake: str, name: str, tmp_path: Path) -> None:
    path = _make_fake(fake, tmp_path / f"fake_{fake}")
    with pytest.raises(UnsupportedAudio) as refused:
        inspect_path(path, name)
    assert str(tmp_path) not in refused.value.reason
    assert refused.value.reason.endswith(".")


def test_png_with_real_mp3_appended_is_refused(tmp_path: Path, made: dict[str, Path]) -> None:
    # mutagen's MPEG scan finds the frames after the image; the start-signature rule must not.
    png = make_png(tmp_path / "cover.png", 32, 32).read_bytes()
    polyglot = tmp_path / "song.mp3"
    polyglot.write_bytes(png + made["mp3"].read_bytes())
    with pytest.raises(UnsupportedAudio, match="not audio"):
        inspect_path(polyglot)


def test_audio_whose_headers_are_damaged_is_refused(tmp_path: Path, made: dict[str, Path]) -> None:
    data = bytearray(made["m4a_faststart"].read_bytes())
    data[40:4000] = bytes(3960)  # wipe the moov box after ftyp
    broken = tmp_path / "broken.m4a"
    broken.write_bytes(bytes(data))
    with pytest.raises(UnsupportedAudio, match="looks like MP4/M4A audio"):
        inspect_path(broken)


# --------------------------------------------------------------------- extensions


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("mp3", "song.wav"),
        ("wav", "song.mp3"),
        ("ogg", "song.m4a"),
        ("webm", "song.ogg"),
        ("flac", "song.ogg"),
        ("m4a", "song.mp3"),
        ("aac", "song.m4a"),
        ("aiff", "song.wav"),
        ("amr", "song.mp3"),
        ("opus", "song.webm"),
        ("mp3", "song.txt"),
        ("wav", "picture.png"),
    ],
)
def test_content_contradicting_the_extension_is_refused(
    kind: str, name: str, made: dict[str, Path]
) -> None:
    with pytest.raises(UnsupportedAudio, match="extension"):
        inspect_path(made[kind], name)


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("opus", "voice.ogg"),
        ("opus", "voice.oga"),
        ("ogg", "voice.opus"),
        ("ogg_flac", "x.ogg"),
        ("m4a", "voice.mp4"),
        ("m4a", "voice.aac"),
        ("aac", "voice.aac"),
        ("webm", "voice.weba"),
        ("aiff", "voice.aif"),
        ("mp3", "VOICE.MP3"),
        ("mp2", "voice.mp3"),
        ("wav", "no_extension"),
        ("mp3", "C:\\fakepath\\voice.mp3"),
        ("wav", "dir/voice.wave"),
        ("amr", "voice.AMR"),
    ],
)
def test_extension_aliases_are_accepted(kind: str, name: str, made: dict[str, Path]) -> None:
    assert inspect_path(made[kind], name).format == EXPECTED[kind][0]


# --------------------------------------------------------------------- allowed formats


def test_allowed_formats_are_respected(made: dict[str, Path]) -> None:
    assert inspect_path(made["wav"], allowed_formats={"wav", "mp3"}).format == "wav"
    with pytest.raises(UnsupportedAudio, match="WAV audio is not accepted"):
        inspect_path(made["wav"], allowed_formats={"mp3", "flac"})
    with pytest.raises(UnsupportedAudio, match="not accepted"):
        inspect_path(made["opus"], allowed_formats=["ogg_vorbis"])


def test_unknown_allowed_format_id_is_a_programming_error(made: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="unknown audio format"):
        inspect_path(made["wav"], allowed_formats={"wave"})


# --------------------------------------------------------------------- reading limits


@pytest.mark.slow
def test_file_larger_than_read_cap_is_read_only_at_the_head(tmp_path: Path) -> None:
    # 120 s of 16-bit stereo at 44.1 kHz: ~21 MB, five times the read budget.
    path = make_audio("wav", tmp_path / "long.wav", 120.0, channels=2)
    size = path.stat().st_size
    assert size > 20_000_000
    with CountingReader(path) as stream:
        facts = inspect_audio(cast(BinaryIO, stream), "long.wav")
        read = stream.bytes_read
    assert facts.duration_seconds == pytest.approx(120.0, rel=0.01)
    assert read < 256 * 1024 < size // 50


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["m4a", "webm_live", "opus", "mp3", "aac"])
def test_formats_with_facts_at_the_tail_read_little(kind: str, tmp_path: Path) -> None:
    need(kind)
    path = make_audio(kind, tmp_path / f"long{KINDS[kind].suffix}", 240.0)
    size = path.stat().st_size
    with CountingReader(path) as stream:
        facts = inspect_audio(cast(BinaryIO, stream), path.name)
        read = stream.bytes_read
    assert facts.duration_seconds == pytest.approx(240.0, rel=0.05)
    assert read < size // 2, (read, size)
    assert read <= READ_BUDGET_BYTES


def test_id3_tag_larger_than_the_budget_is_skipped_not_read(
    tmp_path: Path, made: dict[str, Path]
) -> None:
    padding = 6 * 1024 * 1024  # an ID3v2.4 tag that is all padding, as big as cover art
    synchsafe = bytes((padding >> shift) & 0x7F for shift in (21, 14, 7, 0))
    mp3 = made["mp3"].read_bytes()
    path = tmp_path / "tagged.mp3"
    path.write_bytes(b"ID3\x04\x00\x00" + synchsafe + bytes(padding) + mp3)
    with CountingReader(path) as stream:
        facts = inspect_audio(cast(BinaryIO, stream), path.name)
        read = stream.bytes_read
    assert facts.format == "mp3"
    assert read < 1024 * 1024


def test_headers_beyond_the_budget_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need("webm_live")
    path = make_audio("webm_live", tmp_path / "live.webm", 30.0)
    monkeypatch.setattr(audio, "READ_BUDGET_BYTES", 96 * 1024)
    with pytest.raises(UnsupportedAudio, match="too large to inspect"):
        inspect_path(path)


class FailingStream(CountingReader):
    """Serves the first read, then fails like a chunk file removed mid-inspection."""

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self.bytes_read:
            raise OSError("chunk file vanished")
        return super().readinto(buffer)


@pytest.mark.parametrize("kind", ["m4a", "ogg", "webm_live"])
def test_storage_errors_are_not_disguised_as_bad_audio(kind: str, made: dict[str, Path]) -> None:
    path = made[kind]
    with FailingStream(path) as stream, pytest.raises(OSError, match="vanished"):
        inspect_audio(cast(BinaryIO, stream), path.name)


# --------------------------------------------------------------------- facts shape


def test_metadata_is_flat_ascii_and_omits_none(made: dict[str, Path]) -> None:
    facts = inspect_path(made["opus"])
    metadata = facts.as_metadata()
    assert metadata["audio-format"] == "ogg_opus"
    assert metadata["audio-content-type"] == "audio/ogg"
    assert metadata["audio-duration-seconds"] == f"{facts.duration_seconds:.3f}"
    assert all(k.isascii() and v.isascii() and isinstance(v, str) for k, v in metadata.items())
    sparse = AudioFacts("amr", "audio/amr", None, None, 8000, 1, None)
    assert sparse.as_metadata() == {
        "audio-format": "amr",
        "audio-content-type": "audio/amr",
        "audio-sample-rate": "8000",
        "audio-channels": "1",
    }


def test_as_dict_is_json_and_complete(made: dict[str, Path]) -> None:
    facts = inspect_path(made["mp3"])
    as_dict = facts.as_dict()
    assert set(as_dict) == {
        "format",
        "content_type",
        "codec",
        "duration_seconds",
        "sample_rate",
        "channels",
        "bitrate",
    }
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert AudioFacts("amr", "audio/amr", None, None, None, None, None).as_dict()["codec"] is None


def test_every_format_id_is_documented_with_a_content_type() -> None:
    for fmt, spec in audio.FORMATS.items():
        assert spec.content_type.startswith("audio/"), fmt
    assert {e[0] for e in EXPECTED.values()} <= set(audio.FORMATS)


# ---------------------------------------------------------------- sniff_head (eager flush)
@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_head_alone_gives_the_content_type_inspection_gives(
    kind: str, made: dict[str, Path]
) -> None:
    path = made[kind]
    head = path.read_bytes()[: 128 * 1024]
    assert sniff_head(io.BytesIO(head), path.name) == inspect_path(path).content_type


def test_head_too_short_to_tell_is_no_answer(made: dict[str, Path]) -> None:
    wav = made["wav"].read_bytes()
    assert sniff_head(io.BytesIO(wav[:3]), "a.wav") is None
    # ID3 tags that run past the staged head: the signature after them is not there yet.
    tagged = b"ID3\x04\x00\x00\x00\x01\x00\x00" + bytes(16384)
    assert sniff_head(io.BytesIO(tagged[:10000]), "a.mp3") is None


@pytest.mark.parametrize("fake", ["random", "text", "pdf", "zip"])
def test_head_that_is_not_audio_is_refused(fake: str, tmp_path: Path) -> None:
    data = _make_fake(fake, tmp_path / f"fake_{fake}").read_bytes()
    padded = data + bytes(max(0, 70 * 1024 - len(data)))  # a head long enough to judge
    with pytest.raises(UnsupportedAudio):
        sniff_head(io.BytesIO(padded), "upload.wav")


def test_head_contradicting_the_extension_or_allowed_formats_is_refused(
    made: dict[str, Path],
) -> None:
    head = made["wav"].read_bytes()[: 128 * 1024]
    with pytest.raises(UnsupportedAudio, match="extension"):
        sniff_head(io.BytesIO(head), "a.mp3")
    with pytest.raises(UnsupportedAudio, match="not accepted"):
        sniff_head(io.BytesIO(head), "a.wav", {"mp3"})
