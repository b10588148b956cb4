"""A private Mosquitto: TLS with a local CA, dynamic security with an admin and the two service clients."""

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

PROVISIONER_USERNAME = "mqtt-saas-provisioner"
INGEST_USERNAME = "mqtt-saas-ingest"
INGEST_CLIENT_ID = "mqtt-saas-ingest"
DYNSEC_PREFIX = "$CONTROL/dynamic-security/#"
INGEST_TOPICS = ("t/+/d/+/telemetry", "t/+/d/+/status", "t/+/d/+/+/state")


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


MOSQUITTO_CONF = """\
# Written by scripts/localstack on every start; edits are lost.
per_listener_settings false

# One TLS listener on loopback, no plain-text listener. tls_version is the minimum: 1.2 and 1.3 are offered.
listener {port} {host}
certfile {dir}/server.crt
keyfile {dir}/server.key
tls_version tlsv1.2

allow_anonymous false
plugin {plugin}
plugin_opt_config_file {dir}/dynamic-security.json

# Persistence is a snapshot written on graceful shutdown and every autosave_interval seconds. A SIGKILLed broker
# loses what it had not saved (and redelivers what was acknowledged since), so bound that window to ~10 s. Each save
# rewrites the whole file, so the cost grows with the backlog; fine for a local stack.
persistence true
persistence_location {dir}/
autosave_interval 10

# The default max_queued_messages of 1000 silently drops the 1001st message queued for an offline session, i.e. for
# the ingest drain between two timer runs. 0 would mean "no limit"; keep explicit bounds far above any backlog the
# drain must absorb, so only a forgotten session can reach them, and memory stays bounded. Drops past them are counted
# in $SYS/broker/publish/messages/dropped. max_queued_bytes counts payload bytes and is parsed as a C int in 2.0.x:
# a value >= 2^31 wraps negative and silently becomes 0 (unlimited), so stay below 2 GiB.
max_queued_messages 10000000
max_queued_bytes 1073741824
queue_qos0_messages false
# Sessions of devices that never come back expire. This also caps the Session Expiry a v5 client asks for (the
# shorter wins), so it must stay above the drain's own expiry (INGEST_SESSION_EXPIRY_S, 7 days by default).
persistent_client_expiration 14d

# The app dead-letters payloads above 64 KiB itself, so the broker must let them through (up to 1 MiB) for them to
# reach the dead-letter table. Over message_size_limit a message is dropped, and a v5 QoS 1 publisher gets PUBACK 149
# "packet too large" (2.0.11; not a valid PUBACK code, and paho-mqtt 2.2 drops the connection on it).
# max_packet_size, advertised in CONNACK, disconnects any client sending more; it sits a little above the payload
# limit so that a 1 MiB payload plus topic and properties still fits. (Mosquitto notes at start that max_packet_size
# is recommended over message_size_limit; we keep both for the 64 KiB < payload <= 1 MiB band.)
message_size_limit 1048576
max_packet_size 1114112

log_dest file {dir}/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
log_timestamp_format %Y-%m-%dT%H:%M:%S
"""


class MosquittoBroker:
    """A private Mosquitto with TLS and dynamic security under ``base_dir``.

    First start: a local CA and server certificate, the dynsec file with an ``admin`` client, then (over the
    dynsec API) the ``provisioner`` and ``ingest`` clients. Their random passwords are kept in credentials.json
    (0600), so later starts, in this or another process, reuse port-independent state: certs, dynsec, sessions.
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
            MOSQUITTO_CONF.format(host=self.host, port=self.port, dir=self.base_dir, plugin=dynsec_plugin_path())
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
            if not self._credentials.get("provisioned"):
                self._provision_service_clients()

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
        if self.credentials_file.exists():
            loaded: dict[str, Any] = json.loads(self.credentials_file.read_text())
            return loaded
        credentials: dict[str, Any] = {
            "admin": asdict(Credentials("admin", secrets.token_hex(32))),
            "provisioner": asdict(Credentials(PROVISIONER_USERNAME, secrets.token_hex(32))),
            "ingest": asdict(Credentials(INGEST_USERNAME, secrets.token_hex(32), INGEST_CLIENT_ID)),
            "provisioned": False,
        }
        write_private(self.credentials_file, json.dumps(credentials, indent=2))
        return credentials

    def _provision_service_clients(self) -> None:
        from shared.dynsec import Acl, DynsecClient

        admin, provisioner, ingest = self.admin, self.provisioner, self.ingest
        assert self.port is not None
        with DynsecClient(self.host, self.port, str(self.ca_file), admin.username, admin.password) as dynsec:
            # The control API has no per-command rights: whoever may publish to it is a full admin. The provisioner
            # gets exactly that and the right to read the answers, and no `#` read right as `admin` has.
            dynsec.ensure_role(
                "provisioner",
                [
                    Acl("publishClientSend", DYNSEC_PREFIX),
                    Acl("subscribePattern", DYNSEC_PREFIX),
                    Acl("publishClientReceive", DYNSEC_PREFIX),
                ],
            )
            dynsec.ensure_client(provisioner.username, provisioner.password, roles=["provisioner"])
            # The drain only reads device topics. It is bound to its client id, so nobody else can take over (or
            # kick) its persistent session.
            dynsec.ensure_role(
                "ingest",
                [Acl(kind, topic) for topic in INGEST_TOPICS for kind in ("subscribePattern", "publishClientReceive")],
            )
            dynsec.ensure_client(ingest.username, ingest.password, client_id=ingest.client_id, roles=["ingest"])
        self._credentials["provisioned"] = True
        write_private(self.credentials_file, json.dumps(self._credentials, indent=2))
