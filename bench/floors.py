"""What a byte must cost on this machine, whatever the code around it: the floors under
issue 16's CPU targets. `.venv/bin/python -m bench.floors [--mib 256] [--json FILE]`.

Each figure is CPU time (user + system, this process, all threads) per MiB for one pass
of work the service's contract or S3 itself demands of every byte, in 1 MiB pieces (the
issue's chunk size), median of 5 rounds:

* SHA-256 (hashlib, i.e. OpenSSL; SHA-NI where the CPU has it): the contract asks for
  one per chunk and one per file, so every byte is hashed at least twice;
* MD5: what an S3 server computes over every byte it receives for the part's ETag
  (moto does, AWS, MinIO and Ceph do): on the 2 cores when the store is local;
* a page-cache write of the chunk to staging (a new file, the last one deleted) and its
  read-back for the part;
* a loopback TCP send and receive of the same bytes (the kernel's copies, both ends):
  once for the chunk arriving, once more for the part leaving to S3.

Nothing of the service runs here: these are lower bounds for anything the service could
do, to set beside `./bench/run`'s figures (bench/README.md, "Floors").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

MiB = 1024 * 1024


def cpu_seconds() -> float:
    usage = os.times()
    return usage.user + usage.system


def per_mib(work: Callable[[], None], mib: int, rounds: int = 5) -> float:
    """Median CPU-ms per MiB of `work`, which handles `mib` MiB per call."""
    work()  # warm: page cache, allocator, socket buffers
    samples = []
    for _ in range(rounds):
        before = cpu_seconds()
        work()
        samples.append((cpu_seconds() - before) * 1000 / mib)
    samples.sort()
    return samples[len(samples) // 2]


def hashing(name: str, piece: bytes, mib: int) -> Callable[[], None]:
    def work() -> None:
        hasher = hashlib.new(name)
        for _ in range(mib):
            hasher.update(piece)
        hasher.hexdigest()

    return work


def staging_write(piece: bytes, mib: int, path: Path) -> Callable[[], None]:
    def work() -> None:
        path.unlink(missing_ok=True)  # a new file each round, as each chunk is
        with path.open("wb", buffering=0) as out:
            for _ in range(mib):
                out.write(piece)

    return work


def staging_read(path: Path) -> Callable[[], None]:
    buffer = bytearray(MiB)

    def work() -> None:
        with path.open("rb", buffering=0) as back:
            while back.readinto(buffer):
                pass

    return work


def loopback(piece: bytes, mib: int) -> Callable[[], None]:
    def work() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        received = 0

        def drain() -> None:
            nonlocal received
            conn, _ = listener.accept()
            buffer = bytearray(256 * 1024)
            with conn:
                while count := conn.recv_into(buffer):
                    received += count

        reader = threading.Thread(target=drain)
        reader.start()
        with socket.create_connection(("127.0.0.1", port)) as out:
            for _ in range(mib):
                out.sendall(piece)
        reader.join()
        listener.close()
        assert received == mib * MiB

    return work


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.floors", description=__doc__)
    parser.add_argument("--mib", type=int, default=256, help="MiB per round")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    piece = os.urandom(MiB)
    with tempfile.TemporaryDirectory(prefix="floors-") as tmp:
        staged = Path(tmp) / "floor.chunk"
        figures = {
            "sha256": per_mib(hashing("sha256", piece, args.mib), args.mib),
            "md5": per_mib(hashing("md5", piece, args.mib), args.mib),
            # The unlink of the previous round's file is in the write's figure: staged
            # chunks are deleted once the file is stored.
            "staging_write": per_mib(staging_write(piece, args.mib, staged), args.mib),
            "staging_read": per_mib(staging_read(staged), args.mib),
            "loopback_send_and_receive": per_mib(loopback(piece, args.mib), args.mib),
        }
    for name, value in figures.items():
        print(f"{name}: {value:.3f} CPU-ms per MiB")
    load = os.getloadavg()[0]
    print(f"1-minute load average {load:.1f}")
    if args.json is not None:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = {"cpu_ms_per_mib": figures, "load_average": load, "at": at}
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
