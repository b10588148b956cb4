#!/usr/bin/env python3
"""Rotates one secret of a deployment in an order that never leaves the app with a value nothing accepts for long.

    .venv/bin/python scripts/rotate_secrets.py db-role mqtt_saas_app|mqtt_saas_ingest  -g RG --app APP --vault KV
    .venv/bin/python scripts/rotate_secrets.py broker-client mqtt-saas-ingest|mqtt-saas-provisioner -g RG --app APP \
        --vault KV --broker-host HOST [--ca-file certs/broker-ca.crt]
        (the broker is verified as the app verifies it: --ca-file, else $MQTT_CA_FILE; empty or unset, the system CA
        store, which trusts a Let's Encrypt broker; the generated CA needs --ca-file certs/broker-ca.crt)
    .venv/bin/python scripts/rotate_secrets.py jwt -g RG --app APP --vault KV
    add --dry-run to print the steps without changing anything

Order, for every kind:
  1 a new random value
  2 Key Vault: a new version of the secret (the app's references name no version, so they follow the latest; the app
    does not re-read it yet, so nothing breaks here)
  3 the target: ALTER ROLE ... PASSWORD (database; open connections stay authenticated, only new ones need the new
    password) or dynsec setClientPassword (broker; it disconnects the client's live connection, so a drain run in
    progress ends as connection_lost and its unacknowledged messages wait for the next run). Nothing for the JWT
    secret.
  4 the app re-reads its Key Vault references (a change of app configuration forces that at once, instead of within
    24 hours: "Use Key Vault references as app settings", section Rotation) and restarts.
Between 3 and 4 (about a minute) new connections of the old app instance are refused: a drain run that fails then
leaves its messages on the broker for the next run, an API call gets 503 and can be retried. The JWT secret has no
step 3: after 4 every access token signed with the old secret is refused, and clients log in again or refresh; and
the alert-webhook secrets, encrypted with a key derived from it, must be rotated per target (it says so).

Needs: ADMIN_DATABASE_URL (db-role: the owner that may ALTER ROLE), MQTT_PROVISIONER_PASSWORD (broker-client: the
provisioner's current password; it may change any client's password, its own included). A broker-client rotation
first connects as the provisioner, so a broker it cannot verify or log in to stops it before Key Vault changes.
The broker VM reads the two service passwords from Key Vault only at first boot, so nothing there needs updating.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Key Vault secret names as infra/modules/keyVault.bicep names them (the maintenance and commander ones follow the
# same pattern for the secrets issues 12 and 14 add).
DB_ROLES = {
    "mqtt_saas_app": "database-url",
    "mqtt_saas_ingest": "ingest-database-url",
    "mqtt_saas_maintenance": "maintenance-database-url",
}
BROKER_CLIENTS = {
    "mqtt-saas-ingest": "mqtt-ingest-password",
    "mqtt-saas-provisioner": "mqtt-provisioner-password",
    "mqtt-saas-commander": "mqtt-commander-password",
}
JWT_SECRET_NAME = "auth-jwt-secret"
ROTATED_MARKER = "SECRETS_ROTATED_AT"


def new_password() -> str:
    # URL-safe: it goes into a connection URL unquoted.
    return secrets.token_urlsafe(32)


def url_password(url: str) -> str:
    password = urlsplit(url).password
    if not password:
        raise SystemExit("the database URL carries no password")
    return unquote(password)


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{parts.username}:{password}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def set_role_password(admin_url: str, role: str, password: str) -> None:
    """ALTER ROLE as the database owner; the same value again is a no-op, so deploy can call it on every run."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))


def broker_ca_file(argument: str | None, environ: Mapping[str, str]) -> str | None:
    """The app's rule (shared/core/settings.py, MQTT_CA_FILE): a file verifies the broker; empty or unset means the
    system CA store (a broker with Let's Encrypt's certificate)."""
    value = argument if argument is not None else environ.get("MQTT_CA_FILE", "")
    return value or None


def set_broker_password(
    host: str,
    port: int,
    ca_file: str | None,
    provisioner_user: str,
    provisioner_password: str,
    username: str,
    password: str,
) -> None:
    from shared.broker.dynsec import DynsecClient

    with DynsecClient(host, port, ca_file, provisioner_user, provisioner_password) as dynsec:
        dynsec.set_client_password(username, password)


def check_broker(host: str, port: int, ca_file: str | None, provisioner_user: str, provisioner_password: str) -> None:
    """Connects and logs in as the provisioner, changing nothing; SystemExit saying how the broker was verified."""
    from shared.broker.dynsec import DynsecClient
    from shared.core.exceptions import BrokerUnavailable

    try:
        with DynsecClient(host, port, ca_file, provisioner_user, provisioner_password):
            pass
    except BrokerUnavailable as error:
        verified = f"the CA {ca_file}" if ca_file else "the system CA store (no --ca-file, MQTT_CA_FILE unset)"
        raise SystemExit(
            f"broker {host}:{port} not usable, verified with {verified}: {error}. A broker with the "
            "generated CA needs --ca-file certs/broker-ca.crt. Nothing was changed."
        ) from None


class Azure:
    """The az steps, printed; run unless dry."""

    def __init__(self, resource_group: str, app: str, vault: str, dry_run: bool) -> None:
        self.resource_group, self.app, self.vault, self.dry_run = resource_group, app, vault, dry_run

    def _run(self, command: list[str], shown: list[str] | None = None) -> str:
        print("    $ " + " ".join(shown or command), flush=True)
        if self.dry_run:
            return ""
        return subprocess.run(command, check=True, text=True, stdout=subprocess.PIPE).stdout

    def read_secret(self, name: str) -> str:
        if self.dry_run:
            print(f"    $ az keyvault secret show --vault-name {self.vault} --name {name} --query value")
            return "postgresql://role:old@host:5432/db" if "url" in name else "old"
        return self._run(
            [
                "az",
                "keyvault",
                "secret",
                "show",
                "--vault-name",
                self.vault,
                "--name",
                name,
                "--query",
                "value",
                "--output",
                "tsv",
            ]
        ).strip()

    def write_secret(self, name: str, value: str) -> None:
        # From a 0600 file: a value on the command line would show in the process list.
        with tempfile.NamedTemporaryFile("w", prefix="secret-", delete=True) as handle:
            os.chmod(handle.name, 0o600)
            handle.write(value)
            handle.flush()
            self._run(
                [
                    "az",
                    "keyvault",
                    "secret",
                    "set",
                    "--vault-name",
                    self.vault,
                    "--name",
                    name,
                    "--file",
                    handle.name,
                    "--output",
                    "none",
                ]
            )

    def reload_app(self, stamp: str) -> None:
        self._run(
            [
                "az",
                "functionapp",
                "config",
                "appsettings",
                "set",
                "-g",
                self.resource_group,
                "-n",
                self.app,
                "--settings",
                f"{ROTATED_MARKER}={stamp}",
                "--output",
                "none",
            ]
        )
        self._run(["az", "functionapp", "restart", "-g", self.resource_group, "-n", self.app])


def rotate_db_role(azure: Azure, role: str, admin_url: str | None) -> None:
    secret_name = DB_ROLES[role]
    print(f"[1/4] new password for {role}")
    password = new_password()
    print(f"[2/4] Key Vault {secret_name}: new version")
    azure.write_secret(secret_name, with_password(azure.read_secret(secret_name), password))
    print(f"[3/4] PostgreSQL: ALTER ROLE {role} PASSWORD ***")
    if not azure.dry_run:
        if not admin_url:
            raise SystemExit(
                "ADMIN_DATABASE_URL is not set; Key Vault already has the new value: set it and run "
                "this step again with the same password, or rotate again"
            )
        set_role_password(admin_url, role, password)


def rotate_broker_client(azure: Azure, username: str, host: str, port: int, ca_file: str | None) -> None:
    secret_name = BROKER_CLIENTS[username]
    provisioner_password = os.environ.get("MQTT_PROVISIONER_PASSWORD") or azure.read_secret(
        BROKER_CLIENTS["mqtt-saas-provisioner"]
    )
    print(
        f"[0/4] broker {host}:{port}: log in as mqtt-saas-provisioner, verified with "
        + (f"the CA {ca_file}" if ca_file else "the system CA store")
    )
    if not azure.dry_run:
        check_broker(host, port, ca_file, "mqtt-saas-provisioner", provisioner_password)
    print(f"[1/4] new password for broker client {username}")
    password = new_password()
    print(f"[2/4] Key Vault {secret_name}: new version")
    azure.write_secret(secret_name, password)
    print(f"[3/4] broker {host}:{port}: dynsec setClientPassword {username}")
    if not azure.dry_run:
        set_broker_password(host, port, ca_file, "mqtt-saas-provisioner", provisioner_password, username, password)


def rotate_jwt(azure: Azure) -> None:
    print("[1/4] new token signing secret (64 hex characters)")
    print(f"[2/4] Key Vault {JWT_SECRET_NAME}: new version")
    azure.write_secret(JWT_SECRET_NAME, secrets.token_hex(32))
    print("[3/4] nothing outside the app checks it")
    # The webhook signing secrets are encrypted with a key derived from this one (shared/alerts/delivery.py).
    print(
        "WARNING: every stored alert-webhook secret becomes unreadable with the new secret: rotate each target's "
        "secret afterwards (POST /api/alerts/rules/{rule}/webhooks/{id}/rotate-secret) and give receivers the new "
        "one; until then their deliveries fail with 'secret unavailable'",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["db-role", "broker-client", "jwt"])
    parser.add_argument("name", nargs="?", help="the role (db-role) or the client (broker-client)")
    parser.add_argument("--resource-group", "-g", required=True)
    parser.add_argument("--app", required=True, help="function app name (deploy output functionAppName)")
    parser.add_argument("--vault", required=True, help="key vault name (deploy output keyVaultName)")
    parser.add_argument("--broker-host")
    parser.add_argument("--broker-port", type=int, default=8883)
    parser.add_argument(
        "--ca-file",
        help="CA file that verifies the broker (generated CA: certs/broker-ca.crt); "
        "default $MQTT_CA_FILE; empty or unset: the system CA store (Let's Encrypt)",
    )
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    azure = Azure(args.resource_group, args.app, args.vault, args.dry_run)
    if args.kind == "db-role":
        if args.name not in DB_ROLES:
            parser.error(f"db-role needs one of {', '.join(DB_ROLES)}")
        rotate_db_role(azure, args.name, os.environ.get("ADMIN_DATABASE_URL"))
    elif args.kind == "broker-client":
        if args.name not in BROKER_CLIENTS:
            parser.error(f"broker-client needs one of {', '.join(BROKER_CLIENTS)}")
        if not args.broker_host:
            parser.error("broker-client needs --broker-host (deploy output brokerHost)")
        ca_file = broker_ca_file(args.ca_file, os.environ)
        if ca_file is not None and not Path(ca_file).is_file():
            parser.error(f"CA file {ca_file} not found (empty --ca-file: the system CA store)")
        rotate_broker_client(azure, args.name, args.broker_host, args.broker_port, ca_file)
    else:
        rotate_jwt(azure)
    print("[4/4] the app re-reads its Key Vault references and restarts")
    from datetime import UTC, datetime

    azure.reload_app(datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    print("rotated" if not args.dry_run else "dry run: nothing changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
