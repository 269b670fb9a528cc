"""Decompression of index files, and the decoding thread that runs beside the Packages parser.

Owns: the choice of decoder by an index's name (`open_index_stream`), the translation of decoder
errors into `IndexFormatError`, and `decompressed_blocks`, the parser's source of text, which for
.xz decodes in a thread of its own. Trusts nothing in the compressed bytes: decoder memory is
capped and output comes in blocks of a bounded size, however well the input compresses. Trusts the
caller's stream only to be a stream: whatever it raises passes through unchanged, at the point
where the text decoded before it has been delivered, as if nothing ran ahead.

Why a thread, and why liblzma through ctypes for it. Decoding bookworm main's Packages.xz takes
a little longer than parsing its text, so the two side by side take little more than decoding
alone. But CPython's `LZMADecompressor` re-takes the GIL each time its output buffer grows (32 KiB,
64 KiB, 256 KiB, ...: four times per MiB of text), and while the parser holds the GIL each re-take
waits for the switch interval (5 ms): a thread around it ran no faster than no thread at all
(1.79x against 1.78x the time of decoding alone, in the same rounds). `lzma_code` called through
ctypes fills a whole block per GIL release, so the thread re-takes the GIL about once per block
(1.10x). Where liblzma cannot be loaded, or for the other formats, decoding stays in the caller's
thread with the standard library, as the text is read. The binding is three functions and one
structure of liblzma's stable ABI; input and output buffers are owned by the thread that calls.

The decoding thread belongs to one `decompressed_blocks` generator: it starts at the first block
asked for and is stopped and joined when the generator finishes, raises or is closed (abandoned
generators are closed when collected). It never touches the caller's stream: the caller's thread
reads the compressed input and hands it over, a few blocks ahead.
"""

from __future__ import annotations

import bz2
import collections
import ctypes
import functools
import gzip
import io
import lzma
import threading
import zlib
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, BinaryIO, Protocol

from dhtdeb.errors import IndexFormatError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["LZMA_MEMLIMIT", "decompressed_blocks", "open_index_stream"]

LZMA_MEMLIMIT = 128 << 20
"""Decoder memory an .xz/.lzma header may ask for (xz -9 needs 65 MiB, bookworm main 9 MiB)."""

_COMPRESSED_READ = 1 << 18  # compressed bytes read at a time: about 1.4 MiB of Packages text
_BUFFER_SIZE = 1 << 20  # of the stream `open_index_stream` returns
# The decoding thread: it re-takes the GIL once per block and once per input, and waits for it up to
# the switch interval (5 ms) when the parser holds it. Blocks of 1 MiB (the first smaller, so that
# parsing starts early) and inputs of 1 MiB (~6 MiB of text) keep those waits rare: with 2 and
# 4 MiB blocks it ran no faster (bookworm main: 1.09x decoding alone for 1 MiB blocks, 1.09x for
# 2 MiB, 1.18x for 4 MiB; 1.22x with 256 KiB inputs) and took 5 and 11 MB more.
_FIRST_BLOCK = 1 << 18
_LAST_BLOCK = 1 << 20
_HANDOVER_READ = 1 << 20  # compressed bytes the caller's thread reads at a time for the decoder
_INPUT_DEPTH = 2  # such reads kept ahead of the decoding thread
_OUTPUT_DEPTH = 2  # decoded blocks the decoding thread may have ready before it waits


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


# --- decoding in the caller's thread --------------------------------------------------------------


class _RawStreamError(Exception):
    """Carries an exception of the caller's stream through a decoder, to be re-raised as is."""

    def __init__(self, original: Exception) -> None:
        super().__init__(original)
        self.original = original


class _RawShim:
    """The caller's stream as a decoder sees it: its errors are marked as not the data's fault."""

    def __init__(self, raw: _Readable) -> None:
        self._raw = raw

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._raw.read(size)
        except Exception as exc:
            raise _RawStreamError(exc) from exc

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, /) -> int:
        raise io.UnsupportedOperation("an index stream is read once, front to back")


class _LzmaDecoder:
    """.xz or .lzma with a cap on decoder memory (`lzma.LZMAFile` takes none).

    Concatenated streams are decoded in turn, as xz does; after the last one only zero padding may
    follow (for .xz, in multiples of four bytes, as liblzma requires in the decoding thread).
    """

    def __init__(self, raw: _RawShim, fmt: int) -> None:
        self._raw = raw
        self._format = fmt
        self._decoder = lzma.LZMADecompressor(fmt, memlimit=LZMA_MEMLIMIT)
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        while not self._done:
            if self._decoder.eof:
                rest = self._decoder.unused_data or self._raw.read(_COMPRESSED_READ)
                padding = 0
                while rest and not rest.lstrip(b"\0"):
                    padding += len(rest)
                    rest = self._raw.read(_COMPRESSED_READ)
                padding += len(rest) - len(rest.lstrip(b"\0"))
                if padding % 4 and self._format == lzma.FORMAT_XZ:
                    raise lzma.LZMAError(f"stream padding of {padding} bytes, not a multiple of 4")
                if not rest:
                    self._done = True
                    break
                self._decoder = lzma.LZMADecompressor(self._format, memlimit=LZMA_MEMLIMIT)
                data = self._decoder.decompress(rest.lstrip(b"\0"), size)
            elif self._decoder.needs_input:
                block = self._raw.read(_COMPRESSED_READ)
                if not block:
                    raise EOFError("compressed data ends before its end-of-stream marker")
                data = self._decoder.decompress(block, size)
            else:
                data = self._decoder.decompress(b"", size)
            if data:
                return data
        return b""

    def close(self) -> None:
        self._done = True


class _DecompressedIndex(io.RawIOBase):
    """A decompressing reader whose data errors become `IndexFormatError`.

    Until the first read, an .xz index may instead be handed whole to a decoding thread.
    """

    def __init__(self, decoder: _Readable, name: str, raw: BinaryIO, suffix: str) -> None:
        super().__init__()
        self._decoder = decoder
        self._name = name
        self._raw = raw
        self._suffix = suffix
        self._produced = 0
        self._read_from = False
        self._handed_over = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        if self._handed_over:
            raise ValueError(f"{self._name}: this stream was handed to a decoding thread")
        self._read_from = True
        view = memoryview(buffer).cast("B")
        try:
            data = self._decoder.read(len(view))
        except _RawStreamError as exc:
            raise exc.original from None
        except (lzma.LZMAError, zlib.error, EOFError, OSError, ValueError) as exc:
            raise IndexFormatError(
                f"{self._name}: cannot decompress after {self._produced} bytes: {exc}"
            ) from exc
        n = len(data)
        view[:n] = data
        self._produced += n
        return n

    @property
    def name(self) -> str:
        return self._name

    @property
    def suffix(self) -> str:
        return self._suffix

    def hand_over(self) -> BinaryIO | None:
        """The caller's stream, to be decoded elsewhere, if nothing was read from this one yet."""
        if self._read_from or self._handed_over or self.closed:
            return None
        self._handed_over = True
        return self._raw

    def close(self) -> None:
        if not self.closed:
            close = getattr(self._decoder, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # closing a broken decoder must not hide the error that broke it
                    pass
        super().close()


def _xz(raw: _RawShim) -> _Readable:
    return _LzmaDecoder(raw, lzma.FORMAT_XZ)


def _lzma_alone(raw: _RawShim) -> _Readable:
    return _LzmaDecoder(raw, lzma.FORMAT_ALONE)


def _gzip(raw: _RawShim) -> _Readable:
    return gzip.GzipFile(fileobj=raw, mode="rb")


def _bz2(raw: _RawShim) -> _Readable:
    return bz2.BZ2File(raw)


_DECODERS: dict[str, Callable[[_RawShim], _Readable]] = {
    "xz": _xz,
    "lzma": _lzma_alone,
    "gz": _gzip,
    "bz2": _bz2,
}


def open_index_stream(raw: BinaryIO, name: str) -> BinaryIO:
    """Decompress `raw` according to the suffix of `name` (`.xz`, `.lzma`, `.gz`, `.bz2`, or none).

    `name` is the index's name in the Release file (e.g. `main/binary-amd64/Packages.xz`), not a
    by-hash URL. Decompression is streaming; corrupt or truncated data raises `IndexFormatError`
    when read, as does an unknown suffix (`.zst`, ...) here. Closing the result leaves `raw` open.
    Passed unread to `iter_package_files`, an .xz stream is decoded there in a thread of its own;
    it cannot be read directly after that.
    """
    base = name.rpartition("/")[2]
    _, dot, suffix = base.rpartition(".")
    if not dot:
        return raw
    decoder = _DECODERS.get(suffix.lower())
    if decoder is None:
        raise IndexFormatError(f"{name}: unsupported compression suffix .{suffix}")
    index = _DecompressedIndex(decoder(_RawShim(raw)), name, raw, suffix.lower())
    return io.BufferedReader(index, _BUFFER_SIZE)


def decompressed_blocks(stream: BinaryIO, size: int) -> Generator[bytes, None, None]:
    """The text of `stream` in blocks of at most `size` bytes, up to where it ends or fails.

    An unread .xz stream from `open_index_stream` is decoded in a thread (when liblzma can be
    loaded); any other stream is read in the caller's thread. Either way an error (the data's or
    the caller's stream's) is raised after every byte of text decoded before it was yielded.
    """
    index = getattr(stream, "raw", None)
    read = stream.read
    if isinstance(index, _DecompressedIndex):
        if (
            index.suffix == "xz"
            and (lib := _liblzma()) is not None
            and (raw := index.hand_over()) is not None
        ):
            yield from _XzDecodingThread(lib, index.name, size).blocks(raw)
            return
        if isinstance(stream, io.BufferedReader):
            read = stream.read1  # one decoder call at a time: read() drops text it gathered
    while chunk := read(size):
        yield chunk


# --- liblzma through ctypes -----------------------------------------------------------------------

_LZMA_RUN, _LZMA_FINISH = 0, 3
_LZMA_OK, _LZMA_STREAM_END = 0, 1
_LZMA_CONCATENATED = 0x08
_LZMA_ERRORS = {  # lzma_ret values (2 to 4 need LZMA_TELL_* flags, not used here)
    5: "cannot allocate memory",
    6: f"needs more decoder memory than {LZMA_MEMLIMIT >> 20} MiB",
    7: "not in the .xz format",
    8: "unsupported options",
    9: "compressed data is corrupt",
    10: "compressed data ends before its end-of-stream marker",
    11: "liblzma reports a programming error",
}


class _LzmaStream(ctypes.Structure):
    """`lzma_stream` of liblzma.so.5 (`lzma/base.h`, stable since 5.0); all zero = initialised."""

    _fields_ = (
        ("next_in", ctypes.c_char_p),  # assigned a bytes object, which the structure keeps alive
        ("avail_in", ctypes.c_size_t),
        ("total_in", ctypes.c_uint64),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_size_t),
        ("total_out", ctypes.c_uint64),
        ("allocator", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
        ("reserved_ptr1", ctypes.c_void_p),
        ("reserved_ptr2", ctypes.c_void_p),
        ("reserved_ptr3", ctypes.c_void_p),
        ("reserved_ptr4", ctypes.c_void_p),
        ("seek_pos", ctypes.c_uint64),
        ("reserved_int2", ctypes.c_uint64),
        ("reserved_int3", ctypes.c_size_t),
        ("reserved_int4", ctypes.c_size_t),
        ("reserved_enum1", ctypes.c_int),
        ("reserved_enum2", ctypes.c_int),
    )


@functools.cache
def _liblzma() -> ctypes.CDLL | None:
    """liblzma with the three functions the decoding thread calls, or None where it is missing."""
    for soname in ("liblzma.so.5", "liblzma.5.dylib"):
        try:
            lib = ctypes.CDLL(soname)
        except OSError:
            continue
        stream = ctypes.POINTER(_LzmaStream)
        lib.lzma_stream_decoder.argtypes = (stream, ctypes.c_uint64, ctypes.c_uint32)
        lib.lzma_stream_decoder.restype = ctypes.c_int
        lib.lzma_code.argtypes = (stream, ctypes.c_int)
        lib.lzma_code.restype = ctypes.c_int
        lib.lzma_end.argtypes = (stream,)
        lib.lzma_end.restype = None
        return lib
    return None


# --- the decoding thread --------------------------------------------------------------------------


class _Stopped(Exception):
    """The consumer has gone: the decoding thread ends without delivering anything more."""


_Input = bytes | Exception | None  # compressed bytes, the caller's stream error, or the end
_Output = bytes | BaseException | None  # text, the error to raise in the consumer, or the end


class _XzDecodingThread:
    """Decodes .xz input that the consumer's thread reads and hands over, into bounded blocks.

    Everything below `_cond` is shared between the two threads and changed only under it. Each
    side waits only for the other: the decoder for input or for room among the outputs, the
    consumer for an output or for the decoder to run out of input (then it reads more itself).
    """

    def __init__(self, lib: ctypes.CDLL, name: str, piece_size: int) -> None:
        self._lib = lib
        self._name = name
        self._piece_size = max(1, piece_size)
        self._cond = threading.Condition()
        self._inputs: collections.deque[_Input] = collections.deque()
        self._outputs: collections.deque[_Output] = collections.deque()
        self._stopped = False  # by the consumer
        self._finished = False  # by the decoding thread, after its last output
        self._input_done = False  # the consumer's own: it handed over the end or an error
        self._thread = threading.Thread(target=self._run, name="dhtdeb-xz-decoder", daemon=True)

    # The consumer's side.

    def blocks(self, raw: BinaryIO) -> Generator[bytes, None, None]:
        try:
            self._thread.start()
            while True:
                item = self._next_output(raw)
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                if len(item) <= self._piece_size:
                    yield item
                else:
                    for start in range(0, len(item), self._piece_size):
                        yield item[start : start + self._piece_size]
        finally:
            self._stop()

    def _next_output(self, raw: BinaryIO) -> _Output:
        while True:
            self._hand_over_input(raw)
            with self._cond:
                while not (self._outputs or self._finished) and (self._inputs or self._input_done):
                    self._cond.wait()
                if self._outputs:
                    item = self._outputs.popleft()
                    self._cond.notify_all()
                    return item
                if self._finished:  # not reached: the thread's last output is the end or an error
                    raise RuntimeError(f"{self._name}: the decoding thread ended without a result")

    def _hand_over_input(self, raw: BinaryIO) -> None:
        while not self._input_done:
            with self._cond:
                if len(self._inputs) >= _INPUT_DEPTH:
                    return
            item: _Input
            try:
                item = raw.read(_HANDOVER_READ) or None
            except Exception as exc:  # raised in this thread once the text before it is out
                item = exc
            self._input_done = not isinstance(item, bytes)
            with self._cond:
                self._inputs.append(item)
                self._cond.notify_all()

    def _stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._inputs.clear()
            self._outputs.clear()
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join()

    # The decoding thread's side.

    def _run(self) -> None:
        try:
            self._decode()
        except _Stopped:
            pass
        except BaseException as exc:  # a bug or MemoryError: raised in the consumer's thread
            try:
                self._deliver(exc)
            except _Stopped:
                pass
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _decode(self) -> None:
        stream = _LzmaStream()
        ref = ctypes.byref(stream)
        ret = self._lib.lzma_stream_decoder(ref, LZMA_MEMLIMIT, _LZMA_CONCATENATED)
        if ret != _LZMA_OK:
            self._deliver(self._error(0, ret))
            return
        try:
            self._decode_into_blocks(stream)
        finally:
            stream.next_in, stream.avail_in = None, 0
            self._lib.lzma_end(ref)

    def _decode_into_blocks(self, stream: _LzmaStream) -> None:
        """Fill `out` across inputs; deliver each full block, then the end or the error."""
        ref = ctypes.byref(stream)
        out = ctypes.create_string_buffer(_LAST_BLOCK)
        size = _FIRST_BLOCK
        produced = filled = 0  # text delivered; text in `out`
        finishing = False
        need_input = True  # liblzma took all input and left room: it has no text held back
        while True:
            if need_input:
                item = self._next_input()
                if isinstance(item, Exception):  # the caller's: after the text before it
                    self._deliver_text(out, filled)
                    self._deliver(item)
                    return
                finishing = item is None
                stream.next_in, stream.avail_in = item, len(item or b"")
            stream.next_out = ctypes.addressof(out) + filled
            stream.avail_out = size - filled
            ret = self._lib.lzma_code(ref, _LZMA_FINISH if finishing else _LZMA_RUN)
            filled = size - stream.avail_out
            stream.next_out, stream.avail_out = None, 0
            if ret != _LZMA_OK:  # LZMA_FINISH without progress ends in LZMA_BUF_ERROR
                self._deliver_text(out, filled)
                end = None if ret == _LZMA_STREAM_END else self._error(produced + filled, ret)
                self._deliver(end)
                return
            need_input = not finishing and stream.avail_in == 0 and filled < size
            if filled == size:
                self._deliver_text(out, filled)
                produced, filled = produced + filled, 0
                size = min(2 * size, _LAST_BLOCK)

    def _deliver_text(self, out: ctypes.Array[ctypes.c_char], n: int) -> None:
        if n:
            self._deliver(ctypes.string_at(out, n))

    def _error(self, produced: int, ret: int) -> IndexFormatError:
        reason = _LZMA_ERRORS.get(ret, f"liblzma error {ret}")
        return IndexFormatError(f"{self._name}: cannot decompress after {produced} bytes: {reason}")

    def _next_input(self) -> _Input:
        with self._cond:
            while not self._inputs and not self._stopped:
                self._cond.wait()
            if self._stopped:
                raise _Stopped
            item = self._inputs.popleft()
            self._cond.notify_all()
            return item

    def _deliver(self, item: _Output) -> None:
        with self._cond:
            while len(self._outputs) >= _OUTPUT_DEPTH and not self._stopped:
                self._cond.wait()
            if self._stopped:
                raise _Stopped
            self._outputs.append(item)
            self._cond.notify_all()
