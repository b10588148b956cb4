"""Private PostgreSQL, Mosquitto and Azurite instances for scripts/dev and the test suite (a library, not a command).

Each server lives in a folder of its own, listens on 127.0.0.1 only, on a given port or a free one, and runs as a
child process of the caller in its own process group; stop() leaves no process behind. System services and fixed
ports are never used. When run as root, PostgreSQL runs as the ``postgres`` user and Mosquitto drops to
``mosquitto`` by itself, so their folders are handed to those users.

    process    running a server as our child, /proc helpers, stopping a process and all it left behind
    postgres   PostgresServer
    mosquitto  MosquittoBroker and its certificates
    azurite    AzuriteServer
    stack      LocalStack: the three together
    devstack   what `scripts/dev` runs (not imported here: `python -m` runs it as __main__)

Only the standard library, plus ``shared`` (``shared.dynsec`` needs paho-mqtt, and only to start the broker), so
the repository root must be on sys.path. Importable as ``scripts.localstack`` and, with scripts/ on sys.path too, as
``localstack``.
"""

from .azurite import AZURITE_ACCOUNT, AZURITE_KEY, AzuriteServer
from .mosquitto import Credentials, MosquittoBroker, dynsec_plugin_path
from .postgres import PostgresServer, postgres_bin_dir
from .process import (
    KILL_TIMEOUT_S,
    LOCALHOST,
    REPO_ROOT,
    LocalStackError,
    ProcessInfo,
    descendants,
    free_port,
    is_running,
    process_family,
    process_info,
    process_table,
    stop_process,
    tail,
    wait_until,
)
from .stack import LocalStack

__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "KILL_TIMEOUT_S",
    "LOCALHOST",
    "REPO_ROOT",
    "AzuriteServer",
    "Credentials",
    "LocalStack",
    "LocalStackError",
    "MosquittoBroker",
    "PostgresServer",
    "ProcessInfo",
    "descendants",
    "dynsec_plugin_path",
    "free_port",
    "is_running",
    "postgres_bin_dir",
    "process_family",
    "process_info",
    "process_table",
    "stop_process",
    "tail",
    "wait_until",
]
