"""The shop floor for the gateway's tests, all real and on free loopback ports: pymodbus TCP servers as meters,
an asyncua server as the PLC, a plain Mosquitto as the LAN broker, a Modbus device that never answers and one that
answers garbage, and a TCP relay between the gateway and the cloud broker that the test can cut."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from asyncua import Server, ua
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from scripts.localstack.process import (
    LOCALHOST,
    ServerProcess,
    chown_tree,
    free_port,
    is_root,
    make_traversable,
    wait_until,
)

T = TypeVar("T")

# The servers log every client that goes away (the gateway killed on purpose, a poll cut short) at ERROR.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


class BackgroundLoop:
    """An asyncio loop on a thread of its own, for servers the test drives from its own thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-servers", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


class ModbusMeter:
    """A pymodbus TCP server with 200 holding and input registers and 64 coils and discrete inputs, unit id 1."""

    UNIT = 1

    def __init__(self, background: BackgroundLoop) -> None:
        self.background = background
        self.port = free_port()
        device = SimDevice(
            id=self.UNIT,
            simdata=(
                [SimData(0, count=64, values=False, datatype=DataType.BITS)],
                [SimData(0, count=64, values=False, datatype=DataType.BITS)],
                [SimData(0, count=200, values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=200, values=0, datatype=DataType.REGISTERS)],
            ),
        )

        async def start() -> ModbusTcpServer:
            server = ModbusTcpServer(device, address=(LOCALHOST, self.port))
            await server.serve_forever(background=True)
            return server

        self.server = background.run(start())

    def set(self, function_code: int, address: int, values: list[int] | list[bool]) -> None:
        """function code 3 holding, 4 input, 1 coils, 2 discrete inputs."""
        self.background.run(self.server.async_setValues(self.UNIT, function_code, address, values))

    def get(self, function_code: int, address: int, count: int) -> list[int] | list[bool]:
        return self.background.run(self.server.async_getValues(self.UNIT, function_code, address, count))

    def close(self) -> None:
        self.background.run(self.server.shutdown())


class OpcUaPlc:
    """An asyncua server; each test adds the variables it needs under an object of its own."""

    def __init__(self, background: BackgroundLoop) -> None:
        self.background = background
        self.port = free_port()
        self.url = f"opc.tcp://{LOCALHOST}:{self.port}/"

        async def start() -> tuple[Server, int]:
            server = Server()
            await server.init()
            server.set_endpoint(self.url)
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            index = await server.register_namespace("urn:mqtt-saas:tests:plc")
            await server.start()
            return server, index

        self.server, self.namespace = background.run(start(), timeout=60)

    def add_machine(self, variables: dict[str, tuple[object, ua.VariantType]]) -> dict[str, Any]:
        """Variables by name under a new object; returns name -> node (node ids: ns=<ns>;s=<object>.<name>)."""
        prefix = f"M{secrets.token_hex(4)}"

        async def add() -> dict[str, Any]:
            machine = await self.server.nodes.objects.add_object(self.namespace, prefix)
            nodes = {}
            for name, (value, kind) in variables.items():
                node = await machine.add_variable(
                    ua.NodeId(f"{prefix}.{name}", self.namespace), name, ua.Variant(value, kind)
                )
                await node.set_writable()
                nodes[name] = node
            return nodes

        return self.background.run(add())

    def node_id(self, node: Any) -> str:
        return node.nodeid.to_string()

    def write(self, node: Any, value: object, kind: ua.VariantType) -> None:
        self.background.run(node.write_value(ua.Variant(value, kind)))

    def read(self, node: Any) -> Any:
        return self.background.run(node.read_value())

    def close(self) -> None:
        self.background.run(self.server.stop())


class LanBroker:
    """A plain Mosquitto (no TLS, anonymous), as a gateway's shop-floor LAN broker usually is."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        base_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        conf = base_dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} {LOCALHOST}\nallow_anonymous true\npersistence false\n"
            f"log_dest file {base_dir / 'mosquitto.log'}\n"
        )
        (base_dir / "mosquitto.log").touch()
        if is_root():  # mosquitto drops to its own user, which must reach and write these files
            chown_tree(base_dir, "mosquitto")
            make_traversable(base_dir)
        self._process = ServerProcess("lan-mosquitto", base_dir / "stdout.log")
        self._process.start(["mosquitto", "-c", str(conf)], cwd=base_dir)
        wait_until(self._listening, 20, "LAN mosquitto", alive=self._process.exited)

    def _listening(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((LOCALHOST, self.port), timeout=0.5):
            return True
        return False

    def close(self) -> None:
        self._process.stop(None)


class _RawServer:
    """A TCP server on a thread; handle(conn) serves one connection."""

    def __init__(self) -> None:
        self.sock = socket.create_server((LOCALHOST, 0))
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections.append(conn)
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for conn in self.connections:
            with contextlib.suppress(OSError):
                conn.close()


class SilentDevice(_RawServer):
    """Accepts the connection and reads the requests, never answers: a meter that hangs."""

    def handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass


class GarbageDevice(_RawServer):
    """Answers every request with bytes that are not Modbus."""

    def handle(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                conn.sendall(b"\x00\x01\xff\xff\x00\x03garbage" + secrets.token_bytes(20))


class LinkProxy:
    """A TCP relay from a local port to the broker: cut() closes every relayed connection and refuses new ones (the
    shop floor's Internet link is down), restore() lets them through again."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.sock = socket.create_server((LOCALHOST, 0))
        self.port = self.sock.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self.delay_s = 0.0  # added before relaying each chunk from the broker: a slow, far link
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if not self._up.is_set():
                conn.close()  # refused: the far side closes at once
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._pairs.append((conn, upstream))
                self.accepted += 1
            for a, b, slow in ((conn, upstream, False), (upstream, conn, True)):
                threading.Thread(target=self._pump, args=(a, b, slow), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, slow: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if slow and self.delay_s:
                    time.sleep(self.delay_s)
                sink.sendall(data)
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self.cut()
        self.sock.close()
