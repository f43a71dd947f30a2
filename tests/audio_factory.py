"""Makes real audio files at test time with ffmpeg, sox and espeak-ng (no fixtures on disk).

`make_audio(kind, path, seconds)` writes one file and returns its path. Every kind starts
from a PCM source (a sine tone, or espeak-ng speech padded/trimmed to `seconds`) rendered
by ffmpeg, then encoded by ffmpeg, or by sox where ffmpeg lacks the encoder (AMR-NB here).
`missing_encoder(kind)` says why a kind cannot be made on this machine, for pytest.skip.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
SOX = shutil.which("sox") or "/usr/bin/sox"
ESPEAK = shutil.which("espeak-ng") or "/usr/bin/espeak-ng"


@dataclass(frozen=True)
class Kind:
    suffix: str
    default_rate: int
    ffmpeg_args: tuple[str, ...] = ()  # codec + muxer; empty for sox-made kinds
    ffmpeg_encoder: str | None = None
    sox_type: str | None = None
    piped: bool = False  # written to a pipe, as a streaming recorder would (no seek-back)


KINDS: dict[str, Kind] = {
    "mp3": Kind(".mp3", 44100, ("-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3"), "libmp3lame"),
    "mp2": Kind(".mp2", 44100, ("-c:a", "mp2", "-b:a", "192k", "-f", "mp2"), "mp2"),
    "wav": Kind(".wav", 44100, ("-c:a", "pcm_s16le", "-f", "wav"), "pcm_s16le"),
    "flac": Kind(".flac", 44100, ("-c:a", "flac", "-f", "flac"), "flac"),
    "ogg": Kind(".ogg", 44100, ("-c:a", "libvorbis", "-q:a", "4", "-f", "ogg"), "libvorbis"),
    "opus": Kind(".opus", 48000, ("-c:a", "libopus", "-b:a", "64k", "-f", "ogg"), "libopus"),
    "ogg_flac": Kind(".oga", 44100, ("-c:a", "flac", "-f", "ogg"), "flac"),
    # ffmpeg's default MP4 layout puts `moov` after `mdat`, i.e. in the file's tail.
    "m4a": Kind(".m4a", 44100, ("-c:a", "aac", "-b:a", "128k", "-f", "ipod"), "aac"),
    "m4a_faststart": Kind(
        ".m4a",
        44100,
        ("-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", "-f", "ipod"),
        "aac",
    ),
    "aac": Kind(".aac", 44100, ("-c:a", "aac", "-b:a", "128k", "-f", "adts"), "aac"),
    "webm": Kind(".webm", 48000, ("-c:a", "libopus", "-b:a", "64k", "-f", "webm"), "libopus"),
    # Like a browser's MediaRecorder: unknown-size Segment/Clusters, no Duration, no Cues.
    "webm_live": Kind(
        ".webm", 48000, ("-c:a", "libopus", "-b:a", "64k", "-live", "1", "-f", "webm"), "libopus"
    ),
    "mka": Kind(".mka", 44100, ("-c:a", "libvorbis", "-f", "matroska"), "libvorbis"),
    # RIFF and data sizes left at 0xFFFFFFFF, as by recorders that stream to the network.
    "wav_streamed": Kind(
        ".wav", 44100, ("-c:a", "pcm_s16le", "-f", "wav"), "pcm_s16le", piped=True
    ),
    "aiff": Kind(".aiff", 44100, ("-c:a", "pcm_s16be", "-f", "aiff"), "pcm_s16be"),
    "amr": Kind(".amr", 8000, sox_type="amr-nb"),
    "amr_wb": Kind(".awb", 16000, sox_type="amr-wb"),
}


@functools.cache
def _ffmpeg_encoders() -> frozenset[str]:
    out = subprocess.run(
        [FFMPEG, "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 6 and parts[0][0] == "A":
            names.add(parts[1])
    return frozenset(names)


@functools.cache
def missing_encoder(kind: str) -> str | None:
    """None if `kind` can be made here, else a sentence saying what is missing."""
    spec = KINDS[kind]
    if spec.sox_type is not None:
        # SoX lists AMR as a format even when built without the encoder; only a try tells.
        with tempfile.TemporaryDirectory() as tmp:
            probe = subprocess.run(
                [
                    SOX,
                    "-n",
                    "-r",
                    str(spec.default_rate),
                    "-c",
                    "1",
                    "-t",
                    spec.sox_type,
                    str(Path(tmp) / f"probe{spec.suffix}"),
                    "synth",
                    "0.1",
                    "sine",
                    "440",
                ],
                capture_output=True,
                text=True,
            )
        if probe.returncode != 0:
            return f"sox cannot encode {spec.sox_type} here: {probe.stderr.strip()[:200]}"
        return None
    if spec.ffmpeg_encoder not in _ffmpeg_encoders():
        return f"ffmpeg has no {spec.ffmpeg_encoder} encoder here"
    return None


def make_audio(
    kind: str,
    path: Path,
    seconds: float = 3.0,
    *,
    sample_rate: int | None = None,
    channels: int = 1,
    source: str = "tone",
) -> Path:
    """Write `seconds` of audio of `kind` to `path` and return `path`.

    kind: one of KINDS (mp3, mp2, wav, flac, ogg [vorbis], opus [ogg opus], ogg_flac, m4a,
    m4a_faststart, aac [adts], webm [opus], webm_live, mka, wav_streamed, aiff, amr,
    amr_wb).
    source: "tone" (440 Hz sine, fast even for long files) or "speech" (espeak-ng).
    sample_rate defaults to one the codec takes natively (48 kHz for Opus, 8 kHz AMR-NB).
    """
    spec = KINDS[kind]
    reason = missing_encoder(kind)
    if reason is not None:
        raise RuntimeError(reason)
    rate = sample_rate or spec.default_rate
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pcm = Path(tmp) / "source.wav"
        _render_source(pcm, seconds, rate, channels, source, Path(tmp))
        if spec.sox_type is not None:
            _run([SOX, str(pcm), "-t", spec.sox_type, "-r", str(rate), "-c", "1", str(path)])
        else:
            argv = [
                FFMPEG,
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(pcm),
                *spec.ffmpeg_args,
            ]
            if spec.piped:
                with path.open("wb") as out:
                    _run([*argv, "pipe:1"], stdout=out)
            else:
                _run([*argv, str(path)])
    return path


def _render_source(
    out: Path, seconds: float, rate: int, channels: int, source: str, tmp: Path
) -> None:
    if source == "tone":
        inputs = ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={rate}:duration={seconds}"]
    elif source == "speech":
        spoken = tmp / "speech.wav"
        _run(
            [
                ESPEAK,
                "-w",
                str(spoken),
                "Testing the chunked audio upload service. One two three four five. " * 4,
            ]
        )
        inputs = ["-i", str(spoken)]
    else:
        raise ValueError(f"unknown source {source!r}")
    # apad+atrim make speech exactly `seconds` long whatever espeak-ng produced.
    _run(
        [
            FFMPEG,
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            *inputs,
            "-af",
            f"apad,atrim=0:{seconds}",
            "-ar",
            str(rate),
            "-ac",
            str(channels),
            "-c:a",
            "pcm_s16le",
            str(out),
        ]
    )


def _run(argv: list[str], stdout: BinaryIO | None = None) -> None:
    if stdout is None:
        done = subprocess.run(argv, capture_output=True, text=True)
    else:
        done = subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr[-500:]}")


def make_png(path: Path, width: int = 4, height: int = 4) -> Path:
    """A real, valid PNG image (signature, IHDR, IDAT, IEND with correct CRCs)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    # Filter byte 0 (None) per row, then RGB bytes.
    rows = b"".join(
        b"\x00" + bytes((x * 37 + y * 11) % 256 for x in range(width * 3)) for y in range(height)
    )
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    return path
