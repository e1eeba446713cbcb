"""Zip members read with a cap on the bytes they inflate to, and which entry names are safe
(clipfit_core.zips: the one reader of zip members for datasets and delta zips)."""

from __future__ import annotations

import io
import os
import tracemalloc
import zipfile

import pytest

from clipfit_core.zips import MemberError, MemberTooLarge, read_member, unsafe_name

METHODS = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


def archive(entries: dict[str, bytes], method: int) -> zipfile.ZipFile:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return zipfile.ZipFile(io.BytesIO(buf.getvalue()))


@pytest.mark.parametrize("method", METHODS)
def test_members_read_as_zipfile_reads_them(method):
    payload = os.urandom(50_000) + bytes(200_000)
    z = archive({"a/x.png": payload, "empty.png": b""}, method)
    assert read_member(z, z.getinfo("a/x.png")) == z.read("a/x.png") == payload
    assert read_member(z, z.getinfo("a/x.png"), len(payload)) == payload
    assert read_member(z, z.getinfo("empty.png"), 0) == b""
    with pytest.raises(MemberTooLarge, match="250000 bytes uncompressed, the limit is 1000"):
        read_member(z, z.getinfo("a/x.png"), 1000)  # from the directory: nothing inflated


@pytest.mark.parametrize("method", METHODS[1:])
def test_a_bomb_whose_directory_lies_costs_no_more_than_the_cap(method):
    """8 MB of zeros (a few KB compressed; bzip2 inflates it all in one read in zipfile)
    whose directory entry declares 1 KB, or the limit: refused, holding about the cap."""
    z = archive({"bomb.png": bytes(8 << 20)}, method)
    info = z.getinfo("bomb.png")
    for declared, limit, error, words in [
        (1024, 1 << 20, MemberError, "inflates past the 1024 bytes its directory entry declares"),
        (1 << 20, 1 << 20, MemberTooLarge, "more than 1048576 bytes uncompressed, the limit is"),
    ]:
        info.file_size = declared
        tracemalloc.start()
        try:
            with pytest.raises(error, match=words):
                read_member(z, info, limit)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 4 * limit, (method, declared, peak)


def test_corrupt_encrypted_and_unknown_members_are_refused():
    z = archive({"x.png": os.urandom(1000)}, zipfile.ZIP_STORED)
    info = z.getinfo("x.png")
    info.CRC ^= 1
    with pytest.raises(MemberError, match="bad CRC-32"):
        read_member(z, info)
    info.CRC ^= 1
    info.flag_bits |= 0x1
    with pytest.raises(MemberError, match="encrypted"):
        read_member(z, info)
    info.flag_bits &= ~0x1
    info.compress_type = 99
    with pytest.raises(MemberError, match="compression method 99 is not supported"):
        read_member(z, info)
    z = archive({"x.png": bytes(100_000)}, zipfile.ZIP_DEFLATED)
    raw = bytearray(z.fp.getvalue())
    raw[60:90] = b"\xff" * 30  # inside the deflate stream
    z = zipfile.ZipFile(io.BytesIO(bytes(raw)))
    with pytest.raises(MemberError):
        read_member(z, z.getinfo("x.png"))


@pytest.mark.parametrize("name, unsafe", [
    ("cat/1.png", False), ("a..b/c.png", False), ("adapter_config.json", False),
    ("../x", True), ("a/../../x", True), ("/etc/passwd", True), ("\\abs", True),
    ("..\\..\\x", True), ("a\\..\\..\\x", True), ("C:/x", True), ("c:\\x", True),
    ("C:x", True),
])
def test_unsafe_entry_names(name, unsafe):
    assert unsafe_name(name) is unsafe
