"""A real S3 server on loopback for the tests: moto's server mode (``ThreadedMotoServer``), not an
in-process mock (async fsspec clients such as s3fs do not work with moto's in-process mock).

The server is started once per test session by the ``s3`` fixture (tests/conftest.py) and reached the
way a user reaches any S3-compatible server: ``AWS_ENDPOINT_URL`` and fake credentials in the
environment, which child processes and Dask workers inherit. Each test gets a fresh bucket."""

from __future__ import annotations


import uuid
from dataclasses import dataclass

# boto3 >= 1.36 checksums every request by default; a loopback server like moto's needs them off
ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REQUEST_CHECKSUM_CALCULATION": "WHEN_REQUIRED",
       "AWS_RESPONSE_CHECKSUM_VALIDATION": "WHEN_REQUIRED"}


@dataclass
class S3:
    """A running loopback S3 server and one empty bucket of it."""

    endpoint: str
    bucket: str

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<parts...>``."""
        return "/".join([f"s3://{self.bucket}", *parts])

    def fs(self):
        """A fresh s3fs filesystem on the server (listings not cached)."""
        import s3fs

        return s3fs.S3FileSystem(endpoint_url=self.endpoint, use_listings_cache=False, skip_instance_cache=True)


def start_server():
    """Start moto's threaded server on 127.0.0.1 (a free port); returns ``(server, endpoint)``."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def new_bucket(endpoint: str) -> S3:
    s3 = S3(endpoint=endpoint, bucket=f"t-{uuid.uuid4().hex[:12]}")
    s3.fs().mkdir(s3.bucket)
    return s3


def environment(endpoint: str) -> dict[str, str]:
    """The environment that points S3 clients (s3fs, boto3, child processes) at the server."""
    return {**ENV, "AWS_ENDPOINT_URL": endpoint}


def have_s3() -> bool:
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError:
        return False
    return True



