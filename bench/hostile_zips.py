"""What refusing a hostile zip costs the server: memory for a zip bomb, time for too many
classes.

    python -m bench.hostile_zips                    # both, against a fresh `clipfit serve`
    python -m bench.hostile_zips --bomb-mb 199 --classes 2000

Starts ``clipfit serve`` (a subprocess: SQLite, no worker, auth off, clipfit-tiny) and sends:

(a) zip bombs: one member of ``--bomb-mb`` MB of zeros, with one good image in a second
    class: deflated with its true size in the directory (~200 KB for 199 MB), deflated with
    a directory that declares 1 KB, or 20 MB (CLIPFIT_MAX_IMAGE_BYTES' default: the most a
    member may inflate to), and bzip2 declaring 1 KB (~500 bytes for 199 MB), each to ``POST /v1/datasets`` and to ``POST /v1/jobs``. Each request
    is measured alone, after a reset of the server's peak resident memory
    (``/proc/PID/clear_refs``), as the rise of its peak (VmHWM) over its resident memory
    (VmRSS) before the request;
(b) a zip of ``--classes`` folders with one tiny PNG each (more than CLIPFIT_MAX_CLASSES),
    to ``POST /v1/datasets``: seconds until the answer.

Every answer must be a 422 naming the problem (the bomb's member, the class limit); anything
else stops the run. Prints one line per measure and writes nothing.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
import zipfile
from pathlib import Path

if __package__ in (None, ""):  # run as a file: python bench/hostile_zips.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.classify_throughput import Server, free_port


def png(colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, "PNG")
    return buf.getvalue()


BOMB = "cat/bomb.png"


def bomb_zip(megabytes: int, method: int = zipfile.ZIP_DEFLATED,
             declared: int | None = None) -> bytes:
    """``cat/bomb.png``: ``megabytes`` MB of zeros (its directory entry and local header
    declaring ``declared`` bytes, when given); ``dog/1.png``: a real image."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        with z.open(BOMB, "w") as member:
            chunk = bytes(1 << 20)
            for _ in range(megabytes):
                member.write(chunk)
        z.writestr("dog/1.png", png((0, 0, 200)))
    data = bytearray(buf.getvalue())
    if declared is not None:  # the uncompressed size, in the local and the central header
        name = BOMB.encode()
        for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
            start = 0
            while (i := data.find(signature, start)) >= 0:
                if data[i + name_at:i + name_at + len(name)] == name:
                    data[i + size_at:i + size_at + 4] = declared.to_bytes(4, "little")
                start = i + 4
    return bytes(data)


def classes_zip(count: int) -> bytes:
    """``count`` class folders holding one tiny PNG each (stored)."""
    image = png()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(count):
            z.writestr(f"class{i:05d}/1.png", image)
    return buf.getvalue()


def memory_kb(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def refused(response: httpx.Response, fragment: str, what: str) -> None:
    if response.status_code != 422 or fragment not in response.text:
        raise SystemExit(f"{what}: expected a 422 naming {fragment!r}, got "
                         f"{response.status_code}: {response.text[:500]}")


def peak_rise_mb(client: httpx.Client, pid: int, route: str, data: bytes, form: dict,
                 fragment: str) -> float:
    """The rise of the server's peak resident memory over its resident memory before the
    request, in MB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak (VmHWM) := the current RSS
    before = memory_kb(pid)["VmRSS"]
    r = client.post(route, files={"dataset": ("bomb.zip", data, "application/zip")},
                    data=form)
    refused(r, fragment, f"POST {route}")
    return max(0, memory_kb(pid)["VmHWM"] - before) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bomb-mb", type=int, default=199)
    parser.add_argument("--classes", type=int, default=2000)
    args = parser.parse_args(argv)
    bombs = {"deflate": bomb_zip(args.bomb_mb),
             "deflate, declaring 1 KB": bomb_zip(args.bomb_mb, declared=1024),
             "deflate, declaring 20 MB": bomb_zip(args.bomb_mb, declared=20 << 20),
             "bzip2, declaring 1 KB": bomb_zip(args.bomb_mb, zipfile.ZIP_BZIP2, 1024)}
    many = classes_zip(args.classes)
    with tempfile.TemporaryDirectory(prefix="clipfit-hostile-") as tmp:
        server = Server("clipfit-tiny", "cpu", Path(tmp), free_port(),
                        extra_env={"CLIPFIT_AUTH": "false", "CLIPFIT_RATE_LIMIT": ""},
                        extra_args=["--no-worker"])
        try:
            server.wait_ready(120)
            with httpx.Client(base_url=server.url, timeout=600) as client:
                # warm up the code paths (imports, first connection) with a refused upload
                refused(client.post("/v1/datasets", files={"dataset": (
                    "x.zip", classes_zip(1), "application/zip")}), "classes", "warm-up")
                for kind, bomb in bombs.items():
                    for route, form in (("/v1/datasets", {}),
                                        ("/v1/jobs", {"base_model": "clipfit-tiny"})):
                        rise = peak_rise_mb(client, server.proc.pid, route, bomb, form, BOMB)
                        print(f"zip bomb, {kind} ({len(bomb) / 1024:.1f} KB -> "
                              f"{args.bomb_mb} MB) to POST {route}: peak memory "
                              f"+{rise:.0f} MB")
                start = time.perf_counter()
                r = client.post("/v1/datasets", files={"dataset": ("many.zip", many,
                                                                   "application/zip")})
                seconds = time.perf_counter() - start
                refused(r, "the limit is", "many classes")
                print(f"zip of {args.classes} classes ({len(many) / 1024:.0f} KB) to "
                      f"POST /v1/datasets: refused in {seconds:.2f} s")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
