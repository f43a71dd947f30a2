"""Crafted audio files an attacker would upload: valid signatures around facts out of
range, and containers made of hundreds of thousands of empty chunks or boxes.

Each builder returns bytes; none needs an encoder. The WebM one is a real, minimal
WebM layout (EBML header, Segment of unknown size, Info, Tracks, one Cluster) so only the
crafted element is out of the ordinary.
"""

from __future__ import annotations

import struct


def _ebml_size(size: int) -> bytes:
    # Always the 8-byte form: simple, and legal for every size below 2**56 - 1.
    return bytes([0x01]) + size.to_bytes(7, "big")


def _ebml(element_id: int, payload: bytes) -> bytes:
    id_bytes = element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")
    return id_bytes + _ebml_size(len(payload)) + payload


def webm(
    *,
    channels: bytes = b"\x01",
    sampling_frequency: float = 48000.0,
    duration: float | None = 1000.0,
    timestamp_scale: int = 1_000_000,
) -> bytes:
    """A WebM/Opus file whose Channels payload, SamplingFrequency and Duration (in
    TimestampScale ticks) are whatever the caller says, even if no encoder would."""
    header = _ebml(0x1A45DFA3, _ebml(0x4282, b"webm") + _ebml(0x4287, b"\x04"))
    info = _ebml(0x2AD7B1, timestamp_scale.to_bytes(4, "big"))
    if duration is not None:
        info += _ebml(0x4489, struct.pack(">d", duration))
    audio = _ebml(0xB5, struct.pack(">d", sampling_frequency)) + _ebml(0x9F, channels)
    entry = (
        _ebml(0xD7, b"\x01")  # TrackNumber
        + _ebml(0x83, b"\x02")  # TrackType: audio
        + _ebml(0x86, b"A_OPUS")
        + _ebml(0xE1, audio)
    )
    tracks = _ebml(0x1654AE6B, _ebml(0xAE, entry))
    block = b"\x81" + struct.pack(">h", 0) + b"\x80" + b"\xfc" * 40
    cluster = _ebml(0x1F43B675, _ebml(0xE7, b"\x00") + _ebml(0xA3, block))
    segment = b"\x18\x53\x80\x67" + b"\x01\xff\xff\xff\xff\xff\xff\xff"  # unknown size
    return header + segment + _ebml(0x1549A966, info) + tracks + cluster


def webm_of_tiny_elements(count: int) -> bytes:
    """A WebM whose Segment opens with `count` two-byte Void elements before Info,
    aligned so that the parser's first 64 KiB window ends between two of them (it then
    reads on, up to 1 MiB, instead of stopping at a cut element)."""
    good = webm()
    segment_at = good.index(b"\x18\x53\x80\x67") + 12
    align = b"\xec\x81\x00" if segment_at % 2 else b""  # one three-byte Void
    return good[:segment_at] + align + b"\xec\x80" * count + good[segment_at:]


def aiff_with_empty_chunks(count: int) -> bytes:
    """An AIFF (COMM, `count` empty chunks, a short SSND) of about 8 bytes a chunk."""
    # COMM: channels, frames, bits, 80-bit extended sample rate (44100 Hz).
    rate = b"\x40\x0e\xac\x44" + b"\x00" * 6
    comm = b"COMM" + struct.pack(">I", 18) + struct.pack(">hIh", 1, 100, 16) + rate
    empties = b"junk\x00\x00\x00\x00" * count
    ssnd_body = struct.pack(">II", 0, 0) + b"\x00" * 200
    ssnd = b"SSND" + struct.pack(">I", len(ssnd_body)) + ssnd_body
    body = b"AIFF" + comm + empties + ssnd
    return b"FORM" + struct.pack(">I", len(body)) + body


def m4a_with_empty_boxes(count: int) -> bytes:
    """An MP4 `ftyp` followed by `count` empty 8-byte `free` boxes (and no `moov`)."""
    ftyp_body = b"M4A \x00\x00\x02\x00" + b"M4A isommp42"
    ftyp = struct.pack(">I", 8 + len(ftyp_body)) + b"ftyp" + ftyp_body
    return ftyp + b"\x00\x00\x00\x08free" * count
