#!/usr/bin/env python3
"""Compiles the Sparkplug B payload schema the drain decodes with: shared/ingest/sparkplug/sparkplug_b_pb2.py(i).

    .venv/sparkplug/bin/python scripts/sparkplug_schema.py [--check]

The schema is Eclipse Tahu's sparkplug_b.proto as the pysparkplug package ships it (its compiled descriptor),
compiled again by protoc from grpcio-tools for the protobuf 7 runtime the app pins. Both tools live in the
.venv/sparkplug virtualenv (scripts/install-deps, tests/requirements-sparkplug.txt): pysparkplug pins paho-mqtt<2,
which the app's exact paho pin rules out, so the app keeps only the generated module and the protobuf runtime.
--check regenerates into a temporary folder and fails when the committed files differ.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "shared" / "ingest" / "sparkplug"
GENERATED = ("sparkplug_b_pb2.py", "sparkplug_b_pb2.pyi")


def generate(out: Path) -> None:
    from google.protobuf import descriptor_pb2
    from grpc_tools import protoc
    from pysparkplug._protobuf import sparkplug_b_pb2 as upstream

    schema = descriptor_pb2.FileDescriptorProto.FromString(upstream.DESCRIPTOR.serialized_pb)
    descriptor_set = out / "sparkplug_b.desc"
    descriptor_set.write_bytes(descriptor_pb2.FileDescriptorSet(file=[schema]).SerializeToString())
    code = protoc.main(
        ["protoc", f"--descriptor_set_in={descriptor_set}", f"--python_out={out}", f"--pyi_out={out}", schema.name]
    )
    if code != 0:
        raise SystemExit(f"protoc failed ({code})")
    descriptor_set.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        generate(out)
        stale = [name for name in GENERATED if (out / name).read_bytes() != (TARGET / name).read_bytes()]
        if args.check:
            if stale:
                raise SystemExit(f"out of date: {', '.join(stale)}; run scripts/sparkplug_schema.py")
            print("sparkplug schema: up to date")
            return
        for name in GENERATED:
            (TARGET / name).write_bytes((out / name).read_bytes())
        print(f"wrote {', '.join(str(TARGET / name) for name in GENERATED)}")


if __name__ == "__main__":
    sys.exit(main())
