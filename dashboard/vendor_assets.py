"""Copy the dashboard's npm libraries from node_modules/ (installed by `npm ci`, pinned by
package-lock.json) into dashboard/vendor/, which is committed and ships with the app: nothing is
built or downloaded at deploy time.

    .venv/bin/python dashboard/vendor_assets.py          # after changing the uplot version
    .venv/bin/python dashboard/vendor_assets.py --check  # exit 1 if the committed copy differs

tests/browser/test_dashboard_assets.py runs the check, so a lock change without a re-copy fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENDOR = REPO / "dashboard" / "vendor"
# package name -> files copied from node_modules/<package>/ into vendor/<package>/
# uPlot's minified build (51 kB; the ES module build is 145 kB unminified, and the app serves files
# uncompressed): the device page loads it when it draws its first chart.
FILES = {"uplot": ("dist/uPlot.iife.min.js", "dist/uPlot.min.css", "LICENSE")}


def pairs() -> list[tuple[Path, Path]]:
    return [
        (REPO / "node_modules" / package / name, VENDOR / package / Path(name).name)
        for package, names in FILES.items()
        for name in names
    ]


def locked_version(package: str) -> str:
    lock = json.loads((REPO / "package-lock.json").read_text(encoding="utf-8"))
    return str(lock["packages"][f"node_modules/{package}"]["version"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the copy differs")
    args = parser.parse_args()
    stale = []
    for source, target in pairs():
        if not source.is_file():
            print(f"missing {source.relative_to(REPO)}: run npm ci first", file=sys.stderr)
            return 1
        if not target.is_file() or target.read_bytes() != source.read_bytes():
            stale.append(target)
            if not args.check:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
    for package in FILES:
        version_file = VENDOR / package / "VERSION"
        if not version_file.is_file() or version_file.read_text().strip() != locked_version(package):
            stale.append(version_file)
            if not args.check:
                version_file.write_text(locked_version(package) + "\n")
    if args.check and stale:
        print("out of date: " + ", ".join(str(t.relative_to(REPO)) for t in stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
