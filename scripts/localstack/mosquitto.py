"""A private Mosquitto: TLS with a local CA, dynamic security with an admin and the service clients."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.broker_contract import (
    COMMANDER_ROLE,
    COMMANDER_USERNAME,
    INGEST_CLIENT_ID,
    INGEST_ROLE,
    INGEST_USERNAME,
    PROVISIONER_ROLE,
    PROVISIONER_USERNAME,
    SERVICE_ROLES,
    policy_commands,
    render_mosquitto_conf,
)

from .process import (
    LOCALHOST,
    LocalStackError,
    ServerProcess,
    chown_tree,
    free_port,
    is_root,
    make_traversable,
    run_command,
    wait_until,
    write_private,
)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    client_id: str | None = None

    def __repr__(self) -> str:  # keeps passwords out of test output and logs
        return f"Credentials(username={self.username!r}, client_id={self.client_id!r})"


def dynsec_plugin_path() -> Path:
    for pattern in ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so",
                    "/usr/local/lib/mosquitto_dynamic_security.so"):
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[0]
    raise LocalStackError("mosquitto_dynamic_security.so not found; run scripts/install-deps")


class MosquittoBroker:
    """A private Mosquitto with TLS and dynamic security under ``base_dir``, configured by the broker contract
    (shared/broker_contract.py).

    First start: a local CA and server certificate, and the dynsec file with an ``admin`` client. Every start then
    applies the contract over the dynsec API as that admin: default ACL access, the service roles' ACLs, and the
    provisioner, ingest and commander clients. Their random passwords are kept in credentials.json (0600), so later
    starts, in this or another process, reuse port-independent state: certs, dynsec, sessions.
    """

    def __init__(self, base_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.host = LOCALHOST
        self.port = port
        self.ca_file = self.base_dir / "ca.crt"
        self.conf_file = self.base_dir / "mosquitto.conf"
        self.dynsec_file = self.base_dir / "dynamic-security.json"
        self.credentials_file = self.base_dir / "credentials.json"
        self.log_file = self.base_dir / "mosquitto.log"
        self._ca_key = self.base_dir / "ca.key"
        self._user = "mosquitto" if is_root() else None
        # Mosquitto reports to stderr only until it has read log_dest from its configuration.
        self._process = ServerProcess("mosquitto", self.base_dir / "mosquitto.stdout.log", other_logs=[self.log_file])
        self._credentials: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"MosquittoBroker({str(self.base_dir)!r}, port={self.port})"

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def admin(self) -> Credentials:
        return self._credential("admin")

    @property
    def provisioner(self) -> Credentials:
        return self._credential("provisioner")

    @property
    def ingest(self) -> Credentials:
        return self._credential("ingest")

    @property
    def commander(self) -> Credentials:
        return self._credential("commander")

    def _credential(self, name: str) -> Credentials:
        if not self._credentials:
            self._credentials = self._load_or_create_credentials()
        return Credentials(**self._credentials[name])

    def start(self, timeout: float = 30.0) -> None:
        if self.pid is not None:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.port is None:
            self.port = free_port()
        self._ensure_certificates()
        self._credentials = self._load_or_create_credentials()
        if not self.dynsec_file.exists():
            admin = self.admin
            # Refuses to overwrite an existing file; the admin role it creates may use the whole control API.
            run_command(["mosquitto_ctrl", "dynsec", "init", str(self.dynsec_file), admin.username, admin.password],
                        what="mosquitto_ctrl dynsec init")
        self.conf_file.write_text(
            render_mosquitto_conf(
                listener_host=self.host,
                listener_port=self.port,
                certfile=str(self.base_dir / "server.crt"),
                keyfile=str(self.base_dir / "server.key"),
                plugin=str(dynsec_plugin_path()),
                dynsec_file=str(self.dynsec_file),
                persistence_dir=str(self.base_dir),
                log_dest=f"file {self.log_file}",
            )
        )
        self.log_file.touch(exist_ok=True)
        self.dynsec_file.chmod(0o600)
        if self._user:
            # The broker drops to `mosquitto` and must then write mosquitto.db and dynamic-security.json (atomically,
            # via a temporary file in this folder); otherwise dynsec changes silently live in memory only.
            chown_tree(self.base_dir, self._user, skip=(self.credentials_file, self._ca_key))
            make_traversable(self.base_dir)
        self._process.start(["mosquitto", "-c", str(self.conf_file)], cwd=self.base_dir)
        with self._process.killed_on_error():
            wait_until(self._tls_ready, timeout, f"Mosquitto TLS on port {self.port}", alive=self._process.exited)
            self._apply_broker_contract()

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: SIGTERM makes the broker save its persistence file before it exits."""
        self._process.stop(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: whatever changed since the last autosave is lost, as in a crash."""
        self._process.kill()

    def restart(self, timeout: float = 30.0) -> None:
        self.stop(timeout)
        self.start(timeout)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _tls_ready(self) -> bool:
        assert self.port is not None
        try:
            with (
                socket.create_connection((self.host, self.port), timeout=1.0) as raw,
                self.ssl_context().wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                with suppress(OSError):
                    tls.unwrap()  # a clean close_notify, so the broker does not log an "unexpected eof"
                return True
        except ssl.SSLCertVerificationError:
            raise  # someone else's broker on this port, or certificates replaced under a running broker
        except OSError:
            return False

    def _ensure_certificates(self) -> None:
        server_crt, server_key = self.base_dir / "server.crt", self.base_dir / "server.key"
        if self.ca_file.exists() and server_crt.exists() and server_key.exists():
            return
        work = self.base_dir / "certs.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(mode=0o700)
        ext = work / "server.ext"
        ext.write_text(
            "basicConstraints = critical, CA:FALSE\n"
            "keyUsage = critical, digitalSignature, keyEncipherment\n"
            "extendedKeyUsage = serverAuth\n"
            "subjectAltName = DNS:localhost, IP:127.0.0.1\n"
            "subjectKeyIdentifier = hash\n"
            "authorityKeyIdentifier = keyid, issuer\n"
        )
        # P-256: instant to generate, and the extensions satisfy strict verifiers (e.g. Python 3.13's
        # VERIFY_X509_STRICT).
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        days = "3650"
        run_command(["openssl", "req", "-x509", *ec, "-keyout", str(work / "ca.key"), "-out", str(work / "ca.crt"),
                     "-days", days, "-subj", "/CN=mqtt-saas local CA",
                     "-addext", "basicConstraints=critical,CA:TRUE",
                     "-addext", "keyUsage=critical,keyCertSign,cRLSign"], what="openssl CA")
        run_command(["openssl", "req", *ec, "-keyout", str(work / "server.key"), "-out", str(work / "server.csr"),
                     "-subj", "/CN=localhost"], what="openssl server key")
        run_command(["openssl", "x509", "-req", "-in", str(work / "server.csr"), "-CA", str(work / "ca.crt"),
                     "-CAkey", str(work / "ca.key"), "-set_serial", f"0x{secrets.token_hex(16)}", "-days", days,
                     "-extfile", str(ext), "-out", str(work / "server.crt")], what="openssl server certificate")
        for name in ("ca.key", "server.key"):
            (work / name).chmod(0o600)
        for name in ("ca.key", "server.key", "server.crt", "ca.crt"):  # ca.crt last: it marks completion
            os.replace(work / name, self.base_dir / name)
        shutil.rmtree(work)

    def _load_or_create_credentials(self) -> dict[str, Any]:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        wanted: dict[str, Credentials] = {
            "admin": Credentials("admin", secrets.token_hex(32)),
            "provisioner": Credentials(PROVISIONER_USERNAME, secrets.token_hex(32)),
            "ingest": Credentials(INGEST_USERNAME, secrets.token_hex(32), INGEST_CLIENT_ID),
            "commander": Credentials(COMMANDER_USERNAME, secrets.token_hex(32)),
        }
        credentials: dict[str, Any] = {}
        if self.credentials_file.exists():
            credentials = json.loads(self.credentials_file.read_text())
        # A stack made before a service client existed gets that client's password added, the others kept.
        missing = {name: asdict(value) for name, value in wanted.items() if name not in credentials}
        if missing:
            credentials.update(missing)
            write_private(self.credentials_file, json.dumps(credentials, indent=2))
        return credentials

    def _apply_broker_contract(self) -> None:
        """On every start, not only the first: a broker set up by an older version (or changed by hand) gets today's
        default access and service rights. Each step leaves what is already right as it is."""
        from shared.dynsec import DynsecClient  # paho-mqtt: `scripts/dev down` and friends must not need it

        admin, provisioner, ingest, commander = self.admin, self.provisioner, self.ingest, self.commander
        assert self.port is not None
        with DynsecClient(self.host, self.port, str(self.ca_file), admin.username, admin.password) as dynsec:
            for role in SERVICE_ROLES:
                dynsec.ensure_role(role)
            dynsec.execute(policy_commands())
            dynsec.ensure_client(provisioner.username, provisioner.password, roles=[PROVISIONER_ROLE])
            # Bound to its client id, so nobody else can take over (or kick) the drain's persistent session.
            dynsec.ensure_client(ingest.username, ingest.password, client_id=ingest.client_id, roles=[INGEST_ROLE])
            # Not bound to a client id: every app instance keeps its own connection (random ids).
            dynsec.ensure_client(commander.username, commander.password, roles=[COMMANDER_ROLE])
