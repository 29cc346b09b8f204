"""``python -m emolens.data check [--emotions a,b] [--data DIR]``: validate the corpus."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

INTAKE_COMMANDS = ("todo", "add", "status", "neutral-todo", "neutral-add", "dialogue-todo", "dialogue-add")


def _intake(a: argparse.Namespace) -> int:
    """The writers' commands: list the next planned items, or check a batch and store what passes."""
    from emolens.data import dialogues, intake, neutral_intake
    from emolens.data.records import DataError

    todo = {"todo": lambda: intake.todo(a.writer, a.n, a.data),
            "neutral-todo": lambda: neutral_intake.todo(a.writer, a.n),
            "dialogue-todo": lambda: dialogues.todo(a.kind, a.n, writer=a.writer)}
    add = {"add": lambda: intake.add(a.writer, a.file, a.data),
           "neutral-add": lambda: neutral_intake.add(a.writer, a.file),
           "dialogue-add": lambda: dialogues.add(a.kind, a.file, writer=a.writer)}
    try:
        if a.cmd == "status":
            for w, (have, want) in intake.status().items():
                print(f"{w}: {have}/{want}")
            return 0
        if a.cmd in todo:
            for row in todo[a.cmd]():
                print(json.dumps(row, ensure_ascii=False))
            return 0
        stored, rejected = add[a.cmd]()
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for r in rejected:
        print(f"rejected {r}")
    print(f"stored {stored}, rejected {len(rejected)}")
    return 0 if not rejected else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emolens.data")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="validate stories, banned words, lengths, duplicates and balance")
    c.add_argument("--emotions", help="comma-separated emotion words (default: all)")
    c.add_argument("--data", type=Path, help="data directory (default: the repository's data/)")
    c.add_argument("--banned", type=Path, help="banned-word file (default: DATA/banned_words.jsonl)")
    c.add_argument("--corpus", default="v2", choices=("v1", "v2"), help="v1, or v2 = v1 + the crossed v2 stories")
    c.add_argument("--require-complete", action="store_true", help="an unfinished v2 is an error")
    tb = sub.add_parser("tables", help="the v2 balance tables for the datasheet (markdown)")
    tb.add_argument("--data", type=Path, help="data directory (default: the repository's data/)")
    t = sub.add_parser("todo", help="a v2 writer's next unwritten slots (JSON lines)")
    t.add_argument("--writer", required=True)
    t.add_argument("-n", type=int, default=10)
    ad = sub.add_parser("add", help="check a v2 writer's stories ({id, text} JSON lines) and store the good ones")
    ad.add_argument("--writer", required=True)
    ad.add_argument("file", type=Path)
    sub.add_parser("status", help="v2 stories written per writer")
    nt = sub.add_parser("neutral-todo", help="a neutral-dialogue writer's next planned dialogues")
    nt.add_argument("--writer", required=True)
    nt.add_argument("-n", type=int, default=10)
    dt = sub.add_parser("dialogue-todo", help="next planned speaker or deflection dialogues")
    dt.add_argument("--kind", required=True, choices=("speakers", "deflection"))
    dt.add_argument("-n", type=int, default=10)
    dt.add_argument("--writer", help="which share of the plan (default: the kind's first writer)")
    da = sub.add_parser("dialogue-add", help="check speaker or deflection dialogues and store the good ones")
    da.add_argument("--kind", required=True, choices=("speakers", "deflection"))
    da.add_argument("file", type=Path)
    da.add_argument("--writer", help="which share of the plan (default: the kind's first writer)")
    na = sub.add_parser("neutral-add", help="check neutral dialogues ({id, system, turns} lines) and store them")
    na.add_argument("--writer", required=True)
    na.add_argument("file", type=Path)
    for q in (t, ad):
        q.add_argument("--data", type=Path, help="data directory (default: the repository's data/)")
    a = p.parse_args(argv)
    from emolens.data.check import check_corpus
    from emolens.data.records import DataError

    if a.cmd == "tables":
        from emolens.data.describe import balance_tables

        print(balance_tables(a.data))
        return 0
    if a.cmd in INTAKE_COMMANDS:
        return _intake(a)

    try:
        rep = check_corpus(a.data, a.emotions.split(",") if a.emotions else None, banned_file=a.banned,
                           corpus=a.corpus, require_complete=a.require_complete)
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
