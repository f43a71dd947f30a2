"""Audio format detection and stream facts, run once on the assembled upload.

Role: the core service calls `inspect_audio` at upload completion with a seekable stream
over the staged chunks and the client's file name. It answers "is this audio of a format we
accept, and does it agree with its name?" and returns `AudioFacts` (codec, duration, rate,
channels, bitrate) for the object's metadata and the completion result.

Invariants:
- The format is decided by a signature at the very start of the content (after ID3v2 tags,
  for the formats that allow them), never by the extension and never by a parser's own
  scanning: mutagen will happily "find" MPEG frames inside a PNG, so it is only ever asked
  to parse a stream whose first frame we have already seen where it must be.
- At most `READ_BUDGET_BYTES` are read from the stream in total (head, a tail window for
  formats that keep their length at the end, MP4 box headers). Nothing reads the whole
  file; a file that would need more is refused rather than read further.
- At most `WALK_BUDGET_STEPS` structural steps are taken per inspection: every read the
  parsers make (mutagen reads one header per chunk, box or page) and every EBML element
  walked counts as one. A file built of 500,000 empty chunks therefore costs the same few
  milliseconds as an honest one before it is refused, and the parsers' per-chunk objects
  cannot pile up in memory.
- Every fact is range-checked where it leaves the parsers (`_checked_int`,
  `_checked_duration`; EBML values where they are decoded): channels 1-255,
  sample rate and bitrate within what real audio uses, duration finite and at most
  `MAX_DURATION_SECONDS`. A fact out of range is dropped (None), never passed on, so no
  response, row, webhook or metadata value can hold an absurd number, NaN or Infinity.
  Structure that breaks its own format's rules (an EBML unsigned integer over 8 bytes) is
  a damaged file: 415.
- The extension must name the detected format's family (see `_EXTENSION_FAMILIES`); a name
  with no extension makes no claim and is judged by content alone.
- Every refusal is `UnsupportedAudio` with a short sentence meant for the uploader. An error
  raised by the underlying stream itself (storage I/O) is re-raised untouched, so it is not
  mistaken for a bad file.

Parsing is delegated to mutagen where it covers the format; WebM/Matroska (EBML) and AMR
are parsed here, minimally: no maintained Python library reads browser-recorded WebM
(unknown-size Segment, no SeekHead) without walking the whole file, and AMR's storage
format is a six-byte magic plus fixed-size frames.
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, cast

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from mutagen import FileType

# mutagen is imported by the parsers below, on the first completion that needs one: the
# served process does not carry it while idle (~2.5 MB; tests/test_memory.py). Atoms (the
# MP4 box tree MP4Info needs) and ES_Descriptor (AAC config) are mutagen internals, not in
# mutagen.mp4.__all__: one more reason mutagen is pinned exactly.

__all__ = [
    "FORMATS",
    "MAX_CHANNELS",
    "MAX_DURATION_SECONDS",
    "READ_BUDGET_BYTES",
    "WALK_BUDGET_STEPS",
    "AudioFacts",
    "UnsupportedAudio",
    "inspect_audio",
    "sniff_head",
]

READ_BUDGET_BYTES = 4 * 1024 * 1024
"""Total bytes one inspection may read. Enough for any sane header, MP4 `moov` index of
hours of audio, and the Ogg/WebM tail window; small enough to stay cheap on a multi-GiB
upload assembled from chunk files."""

WALK_BUDGET_STEPS = 10_000
"""Reads plus EBML elements one inspection may take. Honest files of every format take
1-50 whatever their length, raw ADTS ~600 (mutagen reads its first frames one by one);
each step costs microseconds, so the cap keeps any input to a small fraction of a
CPU-second (a 4 MB AIFF of 500,000 empty chunks: 0.09 CPU-s, was 4.1)."""

MAX_CHANNELS = 255
MIN_SAMPLE_RATE_HZ = 1_000
MAX_SAMPLE_RATE_HZ = 768_000
MAX_BITRATE_BPS = 100_000_000  # 768 kHz x 64-bit float x 2 channels is ~98 Mbit/s
MIN_DURATION_SECONDS = 0.001  # the precision durations are reported with
MAX_DURATION_SECONDS = 30 * 24 * 3600.0
"""Longer claims are dropped: 4 GiB of the lowest-rate AMR is ~85 days, but no recording
anyone uploads here is, and a claim of years is a crafted header."""

_HEAD_BYTES = 64 * 1024
_EBML_HEAD_BYTES = 1024 * 1024  # Tracks may follow a large SeekHead/Void/Tags block.
_EBML_TAIL_BYTES = 256 * 1024
_MAX_ID3_TAGS = 4  # Some writers stack tags; more than a few is not a real file.


@dataclass(frozen=True)
class _Format:
    label: str  # for messages
    content_type: str
    family: str


FORMATS: dict[str, _Format] = {
    "mp3": _Format("MP3", "audio/mpeg", "mpeg"),
    "mp2": _Format("MPEG layer II", "audio/mpeg", "mpeg"),
    "wav": _Format("WAV", "audio/wav", "wav"),
    "flac": _Format("FLAC", "audio/flac", "flac"),
    "ogg_vorbis": _Format("Ogg Vorbis", "audio/ogg", "ogg"),
    "ogg_opus": _Format("Ogg Opus", "audio/ogg", "ogg"),
    "ogg_flac": _Format("Ogg FLAC", "audio/ogg", "ogg"),
    "m4a": _Format("MP4/M4A", "audio/mp4", "mp4"),
    "aac": _Format("AAC (ADTS)", "audio/aac", "aac"),
    "webm": _Format("WebM", "audio/webm", "webm"),
    "matroska": _Format("Matroska", "audio/x-matroska", "matroska"),
    "aiff": _Format("AIFF", "audio/aiff", "aiff"),
    "amr": _Format("AMR", "audio/amr", "amr"),
    "amr_wb": _Format("AMR-WB", "audio/amr-wb", "amr"),
}
"""Every format id `inspect_audio` can return, with its MIME type and extension family."""

# The extension → families it may hold. One family per extension except where real tools
# disagree: ".aac" names a codec, and Apple/Android tools write MP4-wrapped AAC under it as
# often as raw ADTS; ".opus"/".oga"/".ogg" are all just Ogg; ".amr"/".awb" are used for
# either AMR band.
_EXTENSION_FAMILIES: dict[str, frozenset[str]] = {
    "mp3": frozenset({"mpeg"}),
    "mp2": frozenset({"mpeg"}),
    "mpga": frozenset({"mpeg"}),
    "mpa": frozenset({"mpeg"}),
    "wav": frozenset({"wav"}),
    "wave": frozenset({"wav"}),
    "flac": frozenset({"flac"}),
    "ogg": frozenset({"ogg"}),
    "oga": frozenset({"ogg"}),
    "opus": frozenset({"ogg"}),
    "m4a": frozenset({"mp4"}),
    "mp4": frozenset({"mp4"}),
    "m4b": frozenset({"mp4"}),
    "3gp": frozenset({"mp4"}),
    "3ga": frozenset({"mp4"}),
    "aac": frozenset({"aac", "mp4"}),
    "webm": frozenset({"webm"}),
    "weba": frozenset({"webm"}),
    "mka": frozenset({"matroska"}),
    "aif": frozenset({"aiff"}),
    "aiff": frozenset({"aiff"}),
    "aifc": frozenset({"aiff"}),
    "amr": frozenset({"amr"}),
    "awb": frozenset({"amr"}),
}


@dataclass(frozen=True)
class AudioFacts:
    format: str
    content_type: str
    codec: str | None
    duration_seconds: float | None
    sample_rate: int | None
    channels: int | None
    bitrate: int | None

    def as_metadata(self) -> dict[str, str]:
        """Flat, ASCII, lower-case keys: safe as S3 user metadata (x-amz-meta-audio-*)."""
        out: dict[str, str] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                continue  # the range checks let none through; metadata must never say "inf"
            key = "audio-" + field.name.replace("_", "-")
            text = f"{value:.3f}" if isinstance(value, float) else str(value)
            out[key] = text.encode("ascii", "replace").decode("ascii")
        return out

    def as_dict(self) -> dict[str, object]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


class UnsupportedAudio(Exception):
    """The bytes are not audio of a supported format (or contradict the extension badly)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def inspect_audio(
    stream: BinaryIO, file_name: str, allowed_formats: Collection[str] | None = None
) -> AudioFacts:
    """Identify and describe the audio in `stream`; raise UnsupportedAudio to refuse it.

    Blocking. Reads at most READ_BUDGET_BYTES (head, and a tail window where the format
    keeps its length there). `allowed_formats` holds ids from FORMATS; None allows all.
    Refused: content that is not a supported audio format; an extension whose family does
    not hold the detected format, or that is not an audio extension at all; a format not in
    `allowed_formats`; a stream whose headers are damaged or need more than the budget.
    """
    if allowed_formats is not None:
        unknown = set(allowed_formats) - FORMATS.keys()
        if unknown:
            # A typo in configuration must fail loudly, not silently refuse every upload.
            raise ValueError(f"unknown audio format ids: {sorted(unknown)}")

    reader = _BudgetReader(stream, READ_BUDGET_BYTES)
    try:
        sniffed = _sniff(reader)
    except Exception as exc:
        reader.reraise_stream_failure()
        if reader.over_budget:
            raise UnsupportedAudio("The file's headers are too large to inspect.") from None
        if reader.steps.exhausted:
            raise UnsupportedAudio(_TOO_COMPLEX) from None
        raise UnsupportedAudio("The file is not audio in a supported format.") from exc
    if sniffed is None:
        if reader.size == 0:
            raise UnsupportedAudio("The file is empty.")
        raise UnsupportedAudio("The file is not audio in a supported format.")

    spec = FORMATS[sniffed.format]
    _check_extension(spec, file_name)
    if allowed_formats is not None and sniffed.format not in allowed_formats:
        raise UnsupportedAudio(f"{spec.label} audio is not accepted here.")

    try:
        parsed = _PARSERS[sniffed.format](reader, sniffed)
    except (UnsupportedAudio, ImportError):  # a parser's lazy mutagen import: not the file's fault
        raise
    except Exception as exc:
        # mutagen turns IOError into its own errors, so the reader, not the exception
        # type, tells a storage failure or an exhausted budget from a damaged file.
        reader.reraise_stream_failure()
        if reader.over_budget:
            raise UnsupportedAudio(
                f"The {spec.label} file's headers are too large to inspect."
            ) from None
        if reader.steps.exhausted:
            raise UnsupportedAudio(_TOO_COMPLEX) from None
        raise UnsupportedAudio(
            f"The file looks like {spec.label} audio but its stream could not be read."
        ) from exc

    duration = _checked_duration(parsed.duration)
    bitrate = _checked_int(parsed.bitrate, 1, MAX_BITRATE_BPS)
    if bitrate is None and duration is not None:
        bitrate = _checked_int((reader.size - sniffed.offset) * 8 / duration, 1, MAX_BITRATE_BPS)
    return AudioFacts(
        format=sniffed.format,
        content_type=spec.content_type,
        codec=_clean_token(parsed.codec),
        duration_seconds=duration,
        sample_rate=_checked_int(parsed.sample_rate, MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ),
        channels=_checked_int(parsed.channels, 1, MAX_CHANNELS),
        bitrate=bitrate,
    )


_TOO_COMPLEX = "The file's structure is too complex to inspect."


def _checked_int(value: object, low: int, high: int) -> int | None:
    """`value` as an int if it is a finite number in [low, high], else None (dropped).

    Parsers hand back whatever a header says: ints of thousands of digits, floats that
    are inf or NaN, bools. Compared before any conversion, so nothing here can raise.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not low <= value <= high:  # False for NaN
        return None
    return round(value)


def _checked_duration(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not MIN_DURATION_SECONDS <= value <= MAX_DURATION_SECONDS:  # False for NaN
        return None
    return round(float(value), 3)


def sniff_head(
    stream: BinaryIO, file_name: str, allowed_formats: Collection[str] | None = None
) -> str | None:
    """The content type `inspect_audio` would give a file that starts with `stream` (e.g.
    its first chunk, before the rest has arrived), judged by the signature alone.

    None when `stream` ends before the signature can be told (too short, or ID3 tags
    longer than it): the caller does not know yet. Raises UnsupportedAudio when the head
    settles it: no signature we accept where the signature must be, a format the
    extension does not name, or a format not in `allowed_formats` (the same refusals
    `inspect_audio` makes from the same bytes). The stream parsing that `inspect_audio`
    also does (duration, damaged headers) needs the whole file and is not done here.
    """
    reader = _BudgetReader(stream, READ_BUDGET_BYTES)
    try:
        sniffed = _sniff(reader)
    except Exception as exc:
        reader.reraise_stream_failure()
        if reader.over_budget or reader.ended_short or reader.steps.exhausted:
            return None
        raise UnsupportedAudio("The file is not audio in a supported format.") from exc
    if sniffed is None:
        if reader.ended_short:
            return None
        raise UnsupportedAudio("The file is not audio in a supported format.")
    spec = FORMATS[sniffed.format]
    _check_extension(spec, file_name)
    if allowed_formats is not None and sniffed.format not in allowed_formats:
        raise UnsupportedAudio(f"{spec.label} audio is not accepted here.")
    return spec.content_type


# --------------------------------------------------------------------------- reading


class _BudgetExceeded(Exception):
    pass


class _Steps:
    """Structural steps left for one inspection (see WALK_BUDGET_STEPS)."""

    def __init__(self, budget: int) -> None:
        self.left = budget
        self.exhausted = False

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            self.exhausted = True
            raise _BudgetExceeded


class _BudgetReader(io.RawIOBase):
    """Seekable view of the caller's stream that refuses to read past a byte budget.

    It records whether a failure came from the underlying stream, because the parsers
    (mutagen) rewrap I/O errors as format errors.
    """

    def __init__(self, raw: BinaryIO, budget: int) -> None:
        super().__init__()
        self._raw = raw
        self._budget = budget
        self.bytes_read = 0
        self.over_budget = False
        self.ended_short = False  # a read asked for more than the stream held
        self.steps = _Steps(WALK_BUDGET_STEPS)
        self._stream_failure: BaseException | None = None
        self._pos = 0
        self.size = self._call(lambda: raw.seek(0, io.SEEK_END))
        self._call(lambda: raw.seek(0))

    def _call(self, op: Callable[[], int]) -> int:
        try:
            return op()
        except Exception as exc:
            self._stream_failure = exc
            raise

    def reraise_stream_failure(self) -> None:
        if self._stream_failure is not None:
            raise self._stream_failure

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        elif whence == io.SEEK_END:
            target = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if target < 0:
            raise OSError("negative seek position")
        self._pos = target
        return target

    def readinto(self, buffer: WriteableBuffer) -> int:
        # mutagen reads one header per chunk/box/page: counting reads bounds its walks.
        self.steps.take()
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), max(0, self.size - self._pos))
        if wanted < len(view):
            self.ended_short = True
        if wanted == 0:
            return 0
        if self.bytes_read + wanted > self._budget:
            self.over_budget = True
            raise _BudgetExceeded
        position = self._pos
        self._call(lambda: self._raw.seek(position))
        # A stream stitched from chunk files may stop short at a chunk boundary; the
        # parsers take a short read for end of file, so fill the request.
        filled = 0
        while filled < wanted:
            try:
                data = self._raw.read(wanted - filled)
            except Exception as exc:
                self._stream_failure = exc
                raise
            if not data:
                break
            view[filled : filled + len(data)] = data
            filled += len(data)
        self._pos += filled
        self.bytes_read += filled
        return filled

    def read_at(self, offset: int, length: int) -> bytes:
        self.seek(offset)
        return self.read(length) or b""


# --------------------------------------------------------------------------- sniffing


@dataclass(frozen=True)
class _Sniffed:
    format: str
    offset: int  # where the audio stream starts (after any ID3v2 tags)
    head: bytes  # bytes from `offset`, at most _HEAD_BYTES


def _sniff(reader: _BudgetReader) -> _Sniffed | None:
    offset = 0
    head = reader.read_at(0, _HEAD_BYTES)
    tags = 0
    while head[:3] == b"ID3" and len(head) >= 10:
        tag_size = _id3v2_size(head)
        if tag_size is None or tags >= _MAX_ID3_TAGS:
            return None
        offset += tag_size
        head = reader.read_at(offset, _HEAD_BYTES)
        tags += 1
    if tags:
        # Taggers pad with zeros outside the declared tag size more often than one would like.
        padding = len(head) - len(head.lstrip(b"\x00"))
        offset += padding
        head = head[padding:]
        fmt = _sniff_after_id3(head)
    else:
        fmt = _sniff_container(head, reader.steps)
    return _Sniffed(fmt, offset, head) if fmt is not None else None


def _id3v2_size(head: bytes) -> int | None:
    version, flags, raw_size = head[3], head[5], head[6:10]
    if version == 0xFF or any(b & 0x80 for b in raw_size):
        return None
    size = 0
    for b in raw_size:  # synchsafe: 7 bits per byte
        size = (size << 7) | b
    footer = 10 if flags & 0x10 else 0
    return 10 + size + footer


def _sniff_after_id3(head: bytes) -> str | None:
    # ID3v2 only legitimately precedes MPEG audio, ADTS and (by tolerated abuse) FLAC.
    if head[:4] == b"fLaC":
        return "flac"
    return _sniff_frame_sync(head)


def _sniff_frame_sync(head: bytes) -> str | None:
    if len(head) < 4 or head[0] != 0xFF:
        return None
    b1 = head[1]
    if b1 & 0xF6 == 0xF0:  # 12-bit sync, layer bits 00: ADTS
        return "aac"
    if b1 & 0xE0 != 0xE0:
        return None
    version, layer = (b1 >> 3) & 0x03, (b1 >> 1) & 0x03
    bitrate_index, rate_index = head[2] >> 4, (head[2] >> 2) & 0x03
    if version == 0b01 or bitrate_index in (0, 0x0F) or rate_index == 0x03:
        return None  # reserved values: not an MPEG audio header
    return {0b01: "mp3", 0b10: "mp2"}.get(layer)  # layer I is not accepted


def _sniff_container(head: bytes, steps: _Steps) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return _sniff_ogg(head)
    if head[4:8] == b"ftyp":
        return "m4a"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return _sniff_ebml(head, steps)
    if head.startswith(_AMR_NB_MAGIC):
        return "amr"
    if head.startswith(_AMR_WB_MAGIC):
        return "amr_wb"
    if head[:4] == b"ADIF":
        return "aac"
    return _sniff_frame_sync(head)


def _sniff_ogg(head: bytes) -> str | None:
    # The first page of an Ogg file carries exactly the codec's identification packet.
    if len(head) < 27:
        return None
    segments = head[26]
    packet = head[27 + segments : 27 + segments + 8]
    if packet.startswith(b"\x01vorbis"):
        return "ogg_vorbis"
    if packet.startswith(b"OpusHead"):
        return "ogg_opus"
    if packet.startswith(b"\x7fFLAC"):
        return "ogg_flac"
    return None


def _sniff_ebml(head: bytes, steps: _Steps) -> str | None:
    try:
        doc_type = _ebml_header(head, steps)[0]
    except _Malformed:
        return None
    return {"webm": "webm", "matroska": "matroska"}.get(doc_type)


def _check_extension(spec: _Format, file_name: str) -> None:
    extension = _extension(file_name)
    if extension is None:
        return
    families = _EXTENSION_FAMILIES.get(extension)
    shown = f".{extension}" if re.fullmatch(r"[a-z0-9]{1,8}", extension) else "its"
    if families is None:
        raise UnsupportedAudio(f"The file name's {shown} extension is not an audio extension.")
    if spec.family not in families:
        raise UnsupportedAudio(
            f"The file is {spec.label} audio, which does not match its {shown} extension."
        )


def _extension(file_name: str) -> str | None:
    # Browsers have sent Windows paths ("C:\\fakepath\\x.mp3"); only the last part names.
    base = re.split(r"[\\/]", file_name.strip())[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot or not stem or not ext:
        return None
    return ext.lower()


_TOKEN_JUNK = re.compile(r"[^a-z0-9._-]+")


def _clean_token(value: str | None) -> str | None:
    # Codec names may come from file bytes (MP4 four-CCs, Matroska CodecIDs).
    if not value:
        return None
    cleaned = _TOKEN_JUNK.sub("_", value.strip().lower()).strip("_")[:32]
    return cleaned or None


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class _Parsed:
    codec: str | None
    duration: float | None
    sample_rate: int | None
    channels: int | None
    bitrate: int | None = None


class _Malformed(Exception):
    pass


def _parse_mpeg(reader: _BudgetReader, sniffed: _Sniffed) -> _Parsed:
    from mutagen.mp3 import MPEGInfo

    info = MPEGInfo(reader, sniffed.offset)
    # `sketchy` means mutagen found fewer than four chained frames and no Xing/VBRI
    # header; a frame offset other than ours means it skipped what we sniffed as audio.
    if info.sketchy or info.frame_offset != sniffed.offset:
        raise _Malformed("no chain of MPEG frames at the start")
    return _Parsed(
        codec=f"mp{info.layer}",
        duration=info.length,
        sample_rate=info.sample_rate,
        channels=info.channels,
        bitrate=info.bitrate,
    )


def _parse_adts(reader: _BudgetReader, sniffed: _Sniffed) -> _Parsed:
    from mutagen.aac import AACInfo

    reader.seek(0)
    info = AACInfo(reader)
    duration = info.length
    if sniffed.head[:4] != b"ADIF" and info.sample_rate:
        # mutagen extrapolates from the first 100 frames, which is 10-20% off for speech
        # with pauses; frame counts from the whole file (small) or head+tail (large) are not.
        duration = _adts_duration(reader, sniffed.offset, info.sample_rate)
    bitrate = None if duration is None else (reader.size - sniffed.offset) * 8 / duration
    return _Parsed(
        "aac", duration, info.sample_rate, info.channels, round(bitrate) if bitrate else None
    )


_ADTS_EXACT_BYTES = 2 * 1024 * 1024
_ADTS_SAMPLE_BYTES = 256 * 1024
_ADTS_MIN_TAIL_FRAMES = 8
# Honest ADTS frames are hundreds of bytes (2 MiB is ~6,000 of them); seven-byte empty
# frames would make 300,000. Past the cap the walk stops and the rest is extrapolated.
_ADTS_MAX_FRAMES = 20_000


def _adts_duration(reader: _BudgetReader, offset: int, sample_rate: int) -> float | None:
    stream_size = reader.size - offset
    if stream_size <= _ADTS_EXACT_BYTES:
        samples, used, frames = _adts_walk(reader.read_at(offset, stream_size))
        if frames >= _ADTS_MAX_FRAMES:
            return stream_size * samples / used / sample_rate
        return samples / sample_rate if samples else None
    head_samples, head_bytes, _ = _adts_walk(reader.read_at(offset, _ADTS_SAMPLE_BYTES))
    tail = reader.read_at(reader.size - _ADTS_SAMPLE_BYTES, _ADTS_SAMPLE_BYTES)
    tail_samples = tail_bytes = 0
    for start in range(min(len(tail), 8192)):  # an ADTS frame is at most 8191 bytes
        if tail[start] == 0xFF:
            # An offset, not tail[start:]: a tail of 0xFF bytes would copy 256 KiB per try.
            samples, used, _ = _adts_walk(tail, start)
            if samples >= 1024 * _ADTS_MIN_TAIL_FRAMES:
                tail_samples, tail_bytes = samples, used
                break
    samples, used = head_samples + tail_samples, head_bytes + tail_bytes
    return stream_size * samples / used / sample_rate if samples else None


def _adts_walk(buf: bytes, start: int = 0) -> tuple[int, int, int]:
    """(PCM samples, bytes, frames) of the chain of ADTS frames that starts at buf[start]."""
    pos, samples, frames = start, 0, 0
    while (
        pos + 7 <= len(buf)
        and buf[pos] == 0xFF
        and buf[pos + 1] & 0xF6 == 0xF0
        and frames < _ADTS_MAX_FRAMES
    ):
        length = ((buf[pos + 3] & 0x03) << 11) | (buf[pos + 4] << 3) | (buf[pos + 5] >> 5)
        if length < 7 or pos + length > len(buf):
            break
        samples += 1024 * ((buf[pos + 6] & 0x03) + 1)
        pos += length
        frames += 1
    return samples, pos - start, frames


_WAVE_CODECS = {
    1: "pcm",
    3: "pcm_f",
    6: "pcm_alaw",
    7: "pcm_mulaw",
    2: "adpcm_ms",
    0x11: "adpcm_ima_wav",
    0x31: "gsm_ms",
    0x55: "mp3",
}


def _parse_wav(reader: _BudgetReader, sniffed: _Sniffed) -> _Parsed:
    from mutagen.wave import WaveStreamInfo

    info = WaveStreamInfo(reader)
    tag = info.audio_format
    if tag == 0xFFFE:  # WAVE_FORMAT_EXTENSIBLE: the real tag opens the SubFormat GUID
        fmt = _riff_chunk(sniffed.head, b"fmt ")
        if fmt is not None and len(fmt) >= 26:
            tag = struct.unpack_from("<H", fmt, 24)[0]
    bits = info.bits_per_sample
    codec = _WAVE_CODECS.get(tag, f"wav_0x{tag:04x}")
    if codec == "pcm":
        codec = "pcm_u8" if bits == 8 else f"pcm_s{bits}le"
    elif codec == "pcm_f":
        codec = f"pcm_f{bits}le"
    length = info.length
    if info.bitrate:
        # Streaming writers leave the data size at 0 or 0xFFFFFFFF; the file size bounds it.
        at_most = (reader.size - sniffed.offset) * 8 / info.bitrate
        if not length or length > at_most:
            length = at_most
    return _Parsed(codec, length, info.sample_rate, info.channels, info.bitrate)


def _riff_chunk(head: bytes, chunk_id: bytes) -> bytes | None:
    pos = 12
    while pos + 8 <= len(head):
        cid, size = head[pos : pos + 4], struct.unpack_from("<I", head, pos + 4)[0]
        if cid == chunk_id:
            return head[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    return None


_AIFC_CODECS = {
    b"NONE": "be",
    b"twos": "be",
    b"sowt": "le",
    b"fl32": "pcm_f32be",
    b"fl64": "pcm_f64be",
    b"ulaw": "pcm_mulaw",
    b"alaw": "pcm_alaw",
}


def _parse_aiff(reader: _BudgetReader, sniffed: _Sniffed) -> _Parsed:
    from mutagen.aiff import AIFFFile, AIFFInfo

    info = AIFFInfo(reader)
    bits = info.bits_per_sample
    codec = f"pcm_s{bits}be"
    if sniffed.head[8:12] == b"AIFC":
        comm = AIFFFile(reader)["COMM"].read()  # type: ignore[no-untyped-call]
        compression = comm[18:22]
        kind = _AIFC_CODECS.get(compression)
        if kind in ("be", "le"):
            codec = f"pcm_s{bits}{kind}"
        else:
            codec = kind or compression.decode("latin-1")
    return _Parsed(codec, info.length, info.sample_rate, info.channels, info.bitrate)


def _parse_flac(reader: _BudgetReader, sniffed: _Sniffed) -> _Parsed:
    from mutagen.flac import StreamInfo as FLACStreamInfo

    # STREAMINFO is always the first metadata block; parsing only it avoids reading
    # embedded pictures, which mutagen's FLAC class would load whole.
    header = sniffed.head[4:8]
    if len(header) < 4 or header[0] & 0x7F != 0:
        raise _Malformed("FLAC stream does not start with STREAMINFO")
    length = int.from_bytes(header[1:4], "big")
    block = sniffed.head[8 : 8 + length]
    if length < 34 or len(block) != length:
        raise _Malformed("short STREAMINFO")
    info = FLACStreamInfo(block)  # type: ignore[no-untyped-call]
    return _Parsed("flac", info.length, info.sample_rate, info.channels)


class _MutagenInfo(Protocol):
    length: float
    sample_rate: int
    channels: int
    bitrate: int


def _info(loaded: FileType) -> _MutagenInfo:
    # mutagen declares FileType.info as None until load() has run.
    return cast(_MutagenInfo, loaded.info)


def _parse_ogg(reader: _BudgetReader, sniffed: _Sniffed) -> _Parsed:
    from mutagen.oggflac import OggFLAC
    from mutagen.oggopus import OggOpus
    from mutagen.oggvorbis import OggVorbis

    reader.seek(0)
    if sniffed.format == "ogg_vorbis":
        info = _info(OggVorbis(reader))  # type: ignore[no-untyped-call]
        # Vorbis' nominal bitrate is the encoder's target; the average is measured below.
        return _Parsed("vorbis", info.length, info.sample_rate, info.channels)
    if sniffed.format == "ogg_opus":
        info = _info(OggOpus(reader))  # type: ignore[no-untyped-call]
        # Opus always decodes at 48 kHz; the header's "input rate" is informational only.
        return _Parsed("opus", info.length, 48000, info.channels, info.bitrate)
    info = _info(OggFLAC(reader))  # type: ignore[no-untyped-call]
    return _Parsed("flac", info.length, info.sample_rate, info.channels)


_MP4_CODECS = {
    "alac": "alac",
    "ac-3": "ac3",
    "ec-3": "eac3",
    "opus": "opus",
    "flac": "flac",
    "samr": "amr_nb",
    "sawb": "amr_wb",
    "mp4a.6b": "mp3",
    "mp4a.69": "mp3",
}


def _parse_mp4(reader: _BudgetReader, sniffed: _Sniffed) -> _Parsed:
    from mutagen.mp4 import MP4Info
    from mutagen.mp4._atom import Atoms

    # MP4Info alone, not mutagen.mp4.MP4: the latter also loads tags, cover art included.
    reader.seek(0)
    atoms = Atoms(reader)
    info = MP4Info(atoms, reader)  # type: ignore[no-untyped-call]
    raw = str(info.codec).lower()
    channels = info.channels
    if raw.startswith("mp4a.40"):
        channels = _mp4_aac_declared_channels(atoms, reader) or channels
    codec = "aac" if raw.startswith("mp4a.40") else _MP4_CODECS.get(raw, raw)
    return _Parsed(codec, info.length, info.sample_rate, channels, info.bitrate)


def _mp4_aac_declared_channels(atoms: Any, reader: _BudgetReader) -> int | None:
    """Channel count from the AAC AudioSpecificConfig of the first sound track.

    mutagen reports "unknown" for a mono config, because implicitly signalled HE-AAC v2
    would decode to stereo, and then falls back to the sample entry's channel field,
    which ffmpeg and others set to 2 whatever the stream holds. The config's own count is
    what decoders (and ffprobe) report, so it wins.
    """
    from mutagen.mp4._as_entry import ES_Descriptor

    for trak in atoms[b"moov"].findall(b"trak"):
        ok, hdlr = trak[b"mdia", b"hdlr"].read(reader)
        if ok and hdlr[8:12] == b"soun":
            ok, stsd = trak[b"mdia", b"minf", b"stbl", b"stsd"].read(reader)
            break
    else:
        return None
    at = stsd.find(b"esds") if ok else -1
    if at < 0 or stsd[at + 8 : at + 9] != b"\x03":  # after version/flags: ES_DescrTag
        return None
    descriptor = ES_Descriptor.parse(io.BytesIO(stsd[at + 9 :]))  # type: ignore[no-untyped-call]
    config = descriptor.decConfigDescr.decSpecificInfo
    if config is None:
        return None
    if config.psPresentFlag == 1:
        return 2
    declared = getattr(config, "extensionChannelConfiguration", config.channelConfiguration)
    return {7: 8}.get(declared, declared) if 1 <= declared <= 7 else None


# AMR storage format (RFC 4867 §5): magic, then frames of one header byte (0 FT:4 Q 00)
# plus a payload whose size is fixed by the frame type; each frame is 20 ms.
_AMR_NB_MAGIC = b"#!AMR\n"
_AMR_WB_MAGIC = b"#!AMR-WB\n"
_AMR_NB_FRAME_BYTES = (13, 14, 16, 18, 20, 21, 27, 32, 6, None, None, None, None, None, None, 1)
_AMR_WB_FRAME_BYTES = (18, 24, 33, 37, 41, 47, 51, 59, 61, 6, None, None, None, None, 1, 1)
_AMR_FRAME_SECONDS = 0.02


def _parse_amr(reader: _BudgetReader, sniffed: _Sniffed) -> _Parsed:
    wide = sniffed.format == "amr_wb"
    magic, table = (
        (_AMR_WB_MAGIC, _AMR_WB_FRAME_BYTES) if wide else (_AMR_NB_MAGIC, _AMR_NB_FRAME_BYTES)
    )
    head = sniffed.head
    pos, frames = len(magic), 0
    while pos < len(head):
        header = head[pos]
        size = table[(header >> 3) & 0x0F]
        if header & 0x83 or size is None:
            raise _Malformed("invalid AMR frame header")
        if pos + size > len(head):
            break
        pos += size
        frames += 1
    if frames == 0:
        raise _Malformed("no AMR frames")
    # Counting every frame would mean reading the whole file; the head's mean frame size
    # is exact for constant-mode files (the common case) and close for the rest.
    mean_frame = (pos - len(magic)) / frames
    duration = (reader.size - len(magic)) / mean_frame * _AMR_FRAME_SECONDS
    return _Parsed("amr_wb" if wide else "amr_nb", duration, 16000 if wide else 8000, 1)


# --- EBML (WebM / Matroska): only the elements needed for the facts.

_EBML_HEADER = 0x1A45DFA3
_EBML_DOCTYPE = 0x4282
_SEGMENT = 0x18538067
_INFO = 0x1549A966
_TIMESTAMP_SCALE = 0x2AD7B1
_DURATION = 0x4489
_TRACKS = 0x1654AE6B
_TRACK_ENTRY = 0xAE
_TRACK_TYPE = 0x83
_CODEC_ID = 0x86
_DEFAULT_DURATION = 0x23E383
_AUDIO = 0xE1
_SAMPLING_FREQUENCY = 0xB5
_CHANNELS = 0x9F
_CLUSTER = 0x1F43B675
_CLUSTER_TIMESTAMP = 0xE7
_SIMPLE_BLOCK = 0xA3
_BLOCK_GROUP = 0xA0
_BLOCK = 0xA1
_TRACK_TYPE_AUDIO = 2

_MATROSKA_CODECS = {
    "A_OPUS": "opus",
    "A_VORBIS": "vorbis",
    "A_FLAC": "flac",
    "A_MPEG/L3": "mp3",
    "A_MPEG/L2": "mp2",
    "A_AC3": "ac3",
    "A_EAC3": "eac3",
    "A_ALAC": "alac",
    "A_PCM/INT/LIT": "pcm_le",
    "A_PCM/INT/BIG": "pcm_be",
    "A_PCM/FLOAT/IEEE": "pcm_f",
}


def _vint(buf: bytes, pos: int, keep_marker: bool) -> tuple[int | None, int]:
    """Decode an EBML variable-size integer; None means "unknown size" (all ones)."""
    if pos >= len(buf):
        raise _Malformed("truncated")
    first = buf[pos]
    length = 9 - first.bit_length() if first else 9
    if length > (4 if keep_marker else 8) or pos + length > len(buf):
        raise _Malformed("bad variable-size integer")
    value = int.from_bytes(buf[pos : pos + length], "big")
    if keep_marker:
        return value, pos + length
    value &= (1 << (7 * length)) - 1
    return (None if value == (1 << (7 * length)) - 1 else value), pos + length


def _ebml_elements(
    buf: bytes, start: int, end: int, steps: _Steps
) -> Iterator[tuple[int, int, int | None]]:
    """Yield (id, payload start, payload size) for the elements in buf[start:end]; each
    one takes a step, so a megabyte of two-byte elements is not walked to its end."""
    pos = start
    while pos < end:
        steps.take()
        element_id, pos = _vint(buf, pos, keep_marker=True)
        size, pos = _vint(buf, pos, keep_marker=False)
        assert element_id is not None
        yield element_id, pos, size
        if size is None:
            return  # the caller decides whether to descend into an unknown-size element
        pos += size


def _ebml_uint(buf: bytes, start: int, size: int) -> int:
    if size > 8:
        # The spec caps unsigned integers at 8 bytes; a longer one is a crafted header
        # (a 3,000-byte Channels element is a 7,000-digit number).
        raise _Malformed("unsigned integer over 8 bytes")
    return int.from_bytes(buf[start : start + size], "big")


def _ebml_float(buf: bytes, start: int, size: int) -> float:
    if size == 4:
        return float(struct.unpack_from(">f", buf, start)[0])
    if size == 8:
        return float(struct.unpack_from(">d", buf, start)[0])
    raise _Malformed("bad float size")


def _ebml_header(buf: bytes, steps: _Steps) -> tuple[str, int]:
    """Return (DocType, offset just past the EBML header)."""
    element_id, start, size = next(_ebml_elements(buf, 0, len(buf), steps))
    if element_id != _EBML_HEADER or size is None or start + size > len(buf):
        raise _Malformed("no EBML header")
    doc_type = "matroska"  # the spec's default when DocType is absent
    for child, child_start, child_size in _ebml_elements(buf, start, start + size, steps):
        if child == _EBML_DOCTYPE and child_size is not None:
            doc_type = (
                buf[child_start : child_start + child_size]
                .rstrip(b"\x00")
                .decode("ascii", "replace")
            )
    return doc_type, start + size


@dataclass
class _EbmlAudio:
    codec_id: str | None = None
    sample_rate: float | None = None
    channels: int | None = None
    default_duration_ns: int | None = None


def _parse_ebml(reader: _BudgetReader, sniffed: _Sniffed) -> _Parsed:
    # Most files have Info and Tracks in the first few KiB; only a big SeekHead, Void or
    # attachment in front of them justifies reading further.
    head = reader.read_at(0, _HEAD_BYTES)
    parsed = _ebml_head_facts(head, reader.steps)
    if parsed is None and len(head) == _HEAD_BYTES:
        head = reader.read_at(0, _EBML_HEAD_BYTES)
        parsed = _ebml_head_facts(head, reader.steps)
    if parsed is None:
        raise UnsupportedAudio(f"The {FORMATS[sniffed.format].label} file has no audio track.")
    scale, duration_ticks, audio = parsed

    if duration_ticks is not None:
        duration: float | None = duration_ticks * scale / 1e9
    else:
        # Recorders that stream (browsers' MediaRecorder, ffmpeg -live) never go back to
        # write Duration; the last block's timestamp, read from the tail, stands in for it.
        tail_start = max(0, reader.size - _EBML_TAIL_BYTES)
        tail = reader.read_at(tail_start, _EBML_TAIL_BYTES)
        last = _ebml_last_block_timestamp(tail, reader.steps)
        duration = None
        if last is not None:
            duration = last * scale / 1e9 + (audio.default_duration_ns or 0) / 1e9

    codec = None
    if audio.codec_id:
        codec = _MATROSKA_CODECS.get(audio.codec_id)
        if codec is None:
            codec = (
                "aac" if audio.codec_id.startswith("A_AAC") else audio.codec_id.removeprefix("A_")
            )
    rate = _checked_int(audio.sample_rate, MIN_SAMPLE_RATE_HZ, MAX_SAMPLE_RATE_HZ)
    return _Parsed(codec, duration, rate, audio.channels)


def _ebml_head_facts(head: bytes, steps: _Steps) -> tuple[int, float | None, _EbmlAudio] | None:
    """(TimestampScale, Duration in ticks or None, first audio track) from the head, or
    None if no audio track was found in it."""
    _, pos = _ebml_header(head, steps)
    segment_id, segment_start, segment_size = next(_ebml_elements(head, pos, len(head), steps))
    if segment_id != _SEGMENT:
        raise _Malformed("no Segment")
    segment_end = (
        len(head) if segment_size is None else min(len(head), segment_start + segment_size)
    )

    scale, duration_ticks, audio = 1_000_000, None, None
    try:
        for element_id, start, size in _ebml_elements(head, segment_start, segment_end, steps):
            if element_id == _CLUSTER or size is None:
                break  # media data begins; live writers put Info and Tracks before it
            if start + size > len(head):
                break
            if element_id == _INFO:
                for child, cstart, csize in _ebml_elements(head, start, start + size, steps):
                    if child == _TIMESTAMP_SCALE and csize:
                        scale = _ebml_uint(head, cstart, csize)
                    elif child == _DURATION and csize:
                        ticks = _ebml_float(head, cstart, csize)
                        # inf/NaN say nothing: the tail's last block stands in, as when
                        # a live recorder never wrote Duration.
                        duration_ticks = ticks if math.isfinite(ticks) else None
            elif element_id == _TRACKS and audio is None:
                audio = _ebml_first_audio_track(head, start, start + size, steps)
    except _Malformed:
        if audio is None:
            raise
    return None if audio is None else (scale, duration_ticks, audio)


def _ebml_first_audio_track(buf: bytes, start: int, end: int, steps: _Steps) -> _EbmlAudio | None:
    for element_id, entry_start, entry_size in _ebml_elements(buf, start, end, steps):
        if element_id != _TRACK_ENTRY or entry_size is None:
            continue
        track, track_type = _EbmlAudio(channels=1, sample_rate=8000.0), None
        entry_end = entry_start + entry_size
        for child, cstart, csize in _ebml_elements(buf, entry_start, entry_end, steps):
            if csize is None:
                raise _Malformed("unknown-size element inside a track entry")
            size = csize
            if child == _TRACK_TYPE:
                track_type = _ebml_uint(buf, cstart, size)
            elif child == _CODEC_ID:
                track.codec_id = (
                    buf[cstart : cstart + size].rstrip(b"\x00").decode("ascii", "replace")
                )
            elif child == _DEFAULT_DURATION:
                track.default_duration_ns = _ebml_uint(buf, cstart, size)
            elif child == _AUDIO:
                for audio_child, astart, asize in _ebml_elements(buf, cstart, cstart + size, steps):
                    if audio_child == _SAMPLING_FREQUENCY and asize:
                        track.sample_rate = _ebml_float(buf, astart, asize)
                    elif audio_child == _CHANNELS and asize:
                        track.channels = _ebml_uint(buf, astart, asize)
        if track_type == _TRACK_TYPE_AUDIO:
            return track
    return None


def _ebml_last_block_timestamp(tail: bytes, steps: _Steps) -> int | None:
    """Timestamp (in TimestampScale ticks) of the last block in the last Cluster in `tail`.

    Cluster IDs can occur by chance inside block payloads, so a candidate counts only if
    it parses as a cluster whose first child is its Timestamp; otherwise the previous
    occurrence is tried.
    """
    marker = _CLUSTER.to_bytes(4, "big")
    index = tail.rfind(marker)
    while index >= 0:
        found = _ebml_cluster_last_timestamp(tail, index, steps)
        if found is not None:
            return found
        index = tail.rfind(marker, 0, index)
    return None


def _ebml_cluster_last_timestamp(buf: bytes, at: int, steps: _Steps) -> int | None:
    try:
        _, start, size = next(_ebml_elements(buf, at, len(buf), steps))
        end = len(buf) if size is None else min(len(buf), start + size)
        children = _ebml_elements(buf, start, end, steps)
        first, fstart, fsize = next(children)
        if first != _CLUSTER_TIMESTAMP or not fsize or fsize > 8:
            return None
        base = _ebml_uint(buf, fstart, fsize)
    except (_Malformed, StopIteration):
        return None
    last = base
    try:
        for child, cstart, csize in children:
            if csize is None or cstart + csize > len(buf):
                break
            if child == _BLOCK_GROUP:
                for inner, istart, isize in _ebml_elements(buf, cstart, cstart + csize, steps):
                    if inner == _BLOCK and isize:
                        last = max(last, base + _ebml_block_offset(buf, istart))
            elif child == _SIMPLE_BLOCK:
                last = max(last, base + _ebml_block_offset(buf, cstart))
    except _Malformed:
        pass  # a block cut by the end of the file; the ones before it still count
    return last


def _ebml_block_offset(buf: bytes, start: int) -> int:
    _, pos = _vint(buf, start, keep_marker=False)  # track number
    if pos + 2 > len(buf):
        raise _Malformed("truncated block")
    return int(struct.unpack_from(">h", buf, pos)[0])


_PARSERS: dict[str, Callable[[_BudgetReader, _Sniffed], _Parsed]] = {
    "mp3": _parse_mpeg,
    "mp2": _parse_mpeg,
    "aac": _parse_adts,
    "wav": _parse_wav,
    "aiff": _parse_aiff,
    "flac": _parse_flac,
    "ogg_vorbis": _parse_ogg,
    "ogg_opus": _parse_ogg,
    "ogg_flac": _parse_ogg,
    "m4a": _parse_mp4,
    "webm": _parse_ebml,
    "matroska": _parse_ebml,
    "amr": _parse_amr,
    "amr_wb": _parse_amr,
}
