"""Zip archives from elsewhere: which entry names are safe, and reading a member with a cap
on the bytes it inflates to.

``zipfile`` trusts the sizes an archive declares, and for bzip2 and LZMA it inflates each
compressed block whole: a 300-byte bzip2 member can become hundreds of MB in one read.
``read_member`` reads the member's compressed bytes itself and inflates them with a bound on
every step, so a member costs at most its cap in memory, whatever the archive declares.
"""

from __future__ import annotations

import bz2
import lzma
import re
import zipfile
import zlib
from pathlib import PurePosixPath

CHUNK = 64 * 1024  # compressed bytes read at a time
READABLE = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
_ENCRYPTED, _PATCHED, _STRONG = 0x1, 0x20, 0x40
_DRIVE = re.compile(r"[A-Za-z]:")


class MemberError(ValueError):
    """A member cannot be read: encrypted, an unknown method, a corrupt stream, a bad CRC."""


class MemberTooLarge(MemberError):
    """A member is, or inflates to, more bytes than allowed."""


def unsafe_name(name: str) -> bool:
    """An entry name that points outside the folder it would be unpacked into: absolute
    (``/x``, ``\\x``, ``C:x``) or with a ``..`` part, backslashes read as separators (as
    Windows tools read them)."""
    path = name.replace("\\", "/")
    return path.startswith("/") or bool(_DRIVE.match(path)) \
        or ".." in PurePosixPath(path).parts


def read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                limit: int | None = None) -> bytes:
    """The member's bytes, inflated as a stream with a running cap: at most ``limit`` bytes
    (None: no limit of its own) and never more than its directory entry declares. Refused
    from the directory when it declares more than ``limit``; refused as soon as the bytes
    inflated pass the cap otherwise, so a member holds at most about twice the cap (the
    bytes kept, and the decompressor's last output) however far it would inflate.

    Raises:
        MemberTooLarge: more than ``limit`` bytes (declared, or found while inflating).
        MemberError: encrypted, an unknown compression method, a corrupt stream, a CRC or
            size that does not match the directory.
    """
    if limit is not None and info.file_size > limit:
        raise MemberTooLarge(f"{info.file_size} bytes uncompressed, the limit is {limit}")
    if info.flag_bits & (_ENCRYPTED | _PATCHED | _STRONG):
        raise MemberError("encrypted")
    if info.compress_type not in READABLE:
        raise MemberError(f"compression method {info.compress_type} is not supported")
    cap = info.file_size  # at most ``limit``, checked above
    # The member's compressed bytes as they are stored: zipfile checks the local header and
    # reads them; inflating, the size and the CRC are left to this function.
    raw = zipfile.ZipInfo(info.orig_filename)
    raw.header_offset, raw.compress_type = info.header_offset, zipfile.ZIP_STORED
    raw.compress_size = raw.file_size = info.compress_size
    out, size, crc = [], 0, 0
    try:
        with archive.open(raw) as stream:
            inflate = _inflater(info.compress_type, stream, cap)
            while chunk := stream.read(CHUNK):
                piece = inflate(chunk, cap + 1 - size)
                size += len(piece)
                if size > cap:
                    break
                crc = zlib.crc32(piece, crc)
                out.append(piece)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as e:
        raise MemberError(f"corrupt data: {_reason(e)}") from e
    if size > cap:
        if limit is not None and cap == limit:
            raise MemberTooLarge(f"more than {limit} bytes uncompressed, the limit is {limit}")
        raise MemberError(f"inflates past the {cap} bytes its directory entry declares")
    if size != info.file_size:
        raise MemberError(f"{size} bytes, its directory entry declares {info.file_size}")
    if crc != info.CRC:
        raise MemberError("bad CRC-32")
    return b"".join(out)


def _inflater(method: int, stream, cap: int):
    """``inflate(chunk, max_length)``: the bytes ``chunk`` inflates to, at most
    ``max_length`` of them (more than that is refused by the caller, so no leftover is
    kept)."""
    if method == zipfile.ZIP_STORED:
        return lambda chunk, max_length: chunk[:max_length]
    if method == zipfile.ZIP_DEFLATED:
        return zlib.decompressobj(-15).decompress
    if method == zipfile.ZIP_BZIP2:
        return bz2.BZ2Decompressor().decompress
    # LZMA in a zip: version (2 bytes), size of the properties (2), the properties, a raw
    # LZMA1 stream. The dictionary is allocated up front at the size the header names: no
    # larger than the member may be (a match reaching further inflates past it anyway).
    header = stream.read(4)
    props = stream.read(int.from_bytes(header[2:4], "little")) if len(header) == 4 else b""
    if len(props) != 5 or props[0] >= 9 * 5 * 5:
        raise MemberError("corrupt data: bad LZMA properties")
    pb_lp, lc = divmod(props[0], 9)
    pb, lp = divmod(pb_lp, 5)
    dict_size = max(4096, min(int.from_bytes(props[1:5], "little"), cap + 1))
    return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[{
        "id": lzma.FILTER_LZMA1, "lc": lc, "lp": lp, "pb": pb, "dict_size": dict_size}]).decompress


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 120 else text[:117] + "..."
