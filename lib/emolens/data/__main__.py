"""``python -m emolens.data check [--emotions a,b] [--data DIR]``: validate the corpus."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emolens.data")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="validate stories, banned words, lengths, duplicates and balance")
    c.add_argument("--emotions", help="comma-separated emotion words (default: all)")
    c.add_argument("--data", type=Path, help="data directory (default: the repository's data/)")
    c.add_argument("--banned", type=Path, help="banned-word file (default: DATA/banned_words.jsonl)")
    a = p.parse_args(argv)
    from emolens.data.check import check_corpus
    from emolens.data.records import DataError

    try:
        rep = check_corpus(a.data, a.emotions.split(",") if a.emotions else None, banned_file=a.banned)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for w in rep.warnings:
        print(f"warning: {w}")
    for e in rep.errors:
        print(f"error: {e}")
    print(" ".join(f"{k}={v}" for k, v in rep.counts.items()))
    print("OK" if rep.ok else f"FAILED with {len(rep.errors)} error(s)")
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
