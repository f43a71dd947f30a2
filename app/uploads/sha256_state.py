"""SHA-256 whose running state can be saved at a block boundary and resumed elsewhere.

Eager flush hashes a file part by part on whichever replica flushes; `complete` may run
on another. Python's hashlib cannot export a running state, so the state after each part
would die with the process, and `complete` would read the whole flushed prefix back from
S3 to hash it again. After a multiple of 64 bytes, a SHA-256 state is only its eight
32-bit chaining words and the byte count: 40 bytes that fit in a part row.

`Sha256` drives OpenSSL's low-level `SHA256_Init/Update/Final` through ctypes on the
libcrypto that `_hashlib` is itself linked to (same speed as hashlib, and ctypes releases
the GIL during the call, as hashlib does for large buffers). Where that library cannot be
loaded, `new()` falls back to hashlib and `serialisable` is False: hashing still works,
only the state cannot be saved (the caller then reads the prefix back, as before).

Saved states (`export`) are `SAVED_STATE_BYTES` long: the eight words big-endian, then
the byte count as a big-endian 64-bit integer. Exporting mid-block is refused: the bytes
of an unfinished block are not part of this format, and parts are whole blocks.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import struct
from functools import cache
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from _hashlib import HASH

BLOCK_BYTES = 64
SAVED_STATE_BYTES = 40
_SAVED = struct.Struct(">8IQ")


class NotSerialisable(ValueError):
    """The state cannot be exported: mid-block, or the hashlib fallback is in use."""


class _Ctx(ctypes.Structure):
    # OpenSSL's SHA256_CTX (include/openssl/sha.h), stable since 0.9.8: h[8], the bit
    # count split in two words (Nl low, Nh high), the unfinished block and its length.
    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


class Sha256(Protocol):
    serialisable: bool

    def update(self, data: bytes | bytearray | memoryview) -> None: ...

    def copy(self) -> Sha256: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...

    @property
    def size_bytes(self) -> int:
        """Bytes hashed so far."""
        ...

    def export(self) -> bytes:
        """The state, SAVED_STATE_BYTES long; raises NotSerialisable."""
        ...


def _candidates() -> list[str]:
    """The libcrypto `_hashlib` is linked to (read from this process's mappings, so the
    very library Python trusts), then the linker's answer, then the usual soname."""
    found: list[str] = []
    try:
        import _hashlib  # noqa: F401 - loads the library we look for in the mappings

        with open(f"/proc/{os.getpid()}/maps", encoding="utf-8") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                name = os.path.basename(path)
                if name.startswith("libcrypto.so") and path not in found:
                    found.append(path)
    except (ImportError, OSError):
        pass
    for soname in (ctypes.util.find_library("crypto"), "libcrypto.so.3"):
        if soname and soname not in found:
            found.append(soname)
    return found


class _Library:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.init = lib.SHA256_Init
        self.update = lib.SHA256_Update
        self.final = lib.SHA256_Final
        for fn in (self.init, self.update, self.final):
            fn.restype = ctypes.c_int
        self.init.argtypes = [ctypes.POINTER(_Ctx)]
        self.update.argtypes = [ctypes.POINTER(_Ctx), ctypes.c_void_p, ctypes.c_size_t]
        self.final.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Ctx)]


def _check(library: _Library) -> bool:
    """The struct layout must be the one we read: check a known digest and a state
    round trip against hashlib before trusting the library."""
    probe = bytes(range(256)) * 3  # 768 bytes: whole blocks
    ctx = _Ctx()
    if library.init(ctypes.byref(ctx)) != 1:
        return False
    library.update(ctypes.byref(ctx), probe, len(probe))
    if ctx.num != 0 or (ctx.Nh << 32 | ctx.Nl) != len(probe) * 8:
        return False
    out = ctypes.create_string_buffer(32)
    library.final(out, ctypes.byref(ctx))
    return out.raw == hashlib.sha256(probe).digest()


@cache
def _library() -> _Library | None:
    for name in _candidates():
        try:
            library = _Library(ctypes.CDLL(name))
        except (OSError, AttributeError):
            continue
        if _check(library):
            return library
    return None


def available() -> bool:
    """Whether states can be saved here (libcrypto found and checked)."""
    return _library() is not None


class _OpenSslSha256:
    serialisable = True

    def __init__(self, library: _Library, ctx: _Ctx | None = None) -> None:
        self._lib = library
        if ctx is None:
            ctx = _Ctx()
            library.init(ctypes.byref(ctx))
        self._ctx = ctx

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        if view.readonly:
            # ctypes takes the address of a bytes object, but of no other read-only buffer.
            whole = data if isinstance(data, bytes) else view.tobytes()
            self._lib.update(ctypes.byref(self._ctx), whole, view.nbytes)
        else:
            # No copy: the address of the caller's writable buffer.
            buffer = (ctypes.c_char * view.nbytes).from_buffer(view)
            self._lib.update(ctypes.byref(self._ctx), buffer, view.nbytes)

    def copy(self) -> _OpenSslSha256:
        ctx = _Ctx()
        ctypes.memmove(ctypes.byref(ctx), ctypes.byref(self._ctx), ctypes.sizeof(_Ctx))
        return _OpenSslSha256(self._lib, ctx)

    @property
    def size_bytes(self) -> int:
        bits: int = self._ctx.Nh << 32 | self._ctx.Nl
        return bits // 8

    def digest(self) -> bytes:
        ctx = self.copy()._ctx  # finalising destroys the state; callers may go on
        out = ctypes.create_string_buffer(32)
        self._lib.final(out, ctypes.byref(ctx))
        return out.raw

    def hexdigest(self) -> str:
        return self.digest().hex()

    def export(self) -> bytes:
        if self._ctx.num != 0:
            raise NotSerialisable("the state is mid-block (not a multiple of 64 bytes)")
        return _SAVED.pack(*self._ctx.h, self.size_bytes)

    @classmethod
    def restore(cls, library: _Library, saved: bytes) -> _OpenSslSha256:
        if len(saved) != SAVED_STATE_BYTES:
            raise ValueError(f"a saved SHA-256 state is {SAVED_STATE_BYTES} bytes")
        *words, size_bytes = _SAVED.unpack(saved)
        if size_bytes % BLOCK_BYTES:
            raise ValueError("a saved SHA-256 state ends on a block boundary")
        ctx = _Ctx()
        library.init(ctypes.byref(ctx))  # md_len and the rest as OpenSSL sets them
        for position, word in enumerate(words):
            ctx.h[position] = word
        bits = size_bytes * 8
        ctx.Nl = bits & 0xFFFFFFFF
        ctx.Nh = bits >> 32
        ctx.num = 0
        return cls(library, ctx)


class _HashlibSha256:
    """The fallback: hashlib, whose state cannot be exported."""

    serialisable = False

    def __init__(self, inner: HASH | None = None, size_bytes: int = 0) -> None:
        self._inner = inner if inner is not None else hashlib.sha256()
        self._size_bytes = size_bytes

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._inner.update(data)
        self._size_bytes += memoryview(data).nbytes

    def copy(self) -> _HashlibSha256:
        return _HashlibSha256(self._inner.copy(), self._size_bytes)

    @property
    def size_bytes(self) -> int:
        return self._size_bytes

    def digest(self) -> bytes:
        return self._inner.digest()

    def hexdigest(self) -> str:
        return self._inner.hexdigest()

    def export(self) -> bytes:
        raise NotSerialisable("libcrypto could not be loaded: hashlib cannot export states")


def new(*, serialisable: bool = True) -> Sha256:
    """A fresh hasher; one whose state can be exported when libcrypto is available
    (`serialisable=False` forces the hashlib fallback)."""
    library = _library() if serialisable else None
    if library is None:
        return _HashlibSha256()
    return _OpenSslSha256(library)


def restore(saved: bytes) -> Sha256 | None:
    """The hasher `export` saved, or None when libcrypto is not available here (the
    caller hashes from the start instead). Raises ValueError for malformed bytes."""
    library = _library()
    if library is None:
        return None
    return _OpenSslSha256.restore(library, saved)
