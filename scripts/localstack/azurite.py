"""A private Azurite blob service, from the repository's node_modules."""

from __future__ import annotations

import http.client
import os
import signal
from pathlib import Path

from .process import LOCALHOST, REPO_ROOT, LocalStackError, ServerProcess, free_port, wait_until

# Azurite's published development account (its README); it only ever guards a local emulator.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteServer:
    """Azurite's blob service (from the repo's node_modules) with its data under ``base_dir``."""

    def __init__(
        self, base_dir: str | os.PathLike[str], port: int | None = None, executable: str | None = None
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.host = LOCALHOST
        self.port = port
        self.executable = Path(executable) if executable else REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
        self.log_file = self.base_dir / "azurite.log"
        self._process = ServerProcess("azurite", self.log_file)

    def __repr__(self) -> str:
        return f"AzuriteServer({str(self.base_dir)!r}, port={self.port})"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def start(self, timeout: float = 60.0) -> None:
        if self.pid is not None:
            return
        if not os.access(self.executable, os.X_OK):
            raise LocalStackError(f"{self.executable} missing; run scripts/install-deps")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        assert self.port is not None
        port = self.port
        self._process.start(
            [
                str(self.executable),
                "--location",
                str(self.base_dir / "data"),
                "--blobHost",
                self.host,
                "--blobPort",
                str(port),
                "--disableTelemetry",  # on by default: it would phone home from every test run
                "--skipApiVersionCheck",  # the Python SDK may be newer than the emulator
                "--silent",
            ],
            cwd=self.base_dir,
        )
        with self._process.killed_on_error():
            wait_until(self._ready, timeout, f"Azurite on port {port}", alive=self._process.exited)

    def _ready(self) -> bool:
        # Any HTTP answer with Azurite's Server header (this one is a 4xx: the request is unsigned).
        connection = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
        try:
            connection.request("GET", f"/{AZURITE_ACCOUNT}?comp=list")
            response = connection.getresponse()
            response.read()
            return (response.getheader("Server") or "").startswith("Azurite")
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def stop(self, timeout: float = 30.0) -> None:
        self._process.stop(signal.SIGTERM, timeout)
