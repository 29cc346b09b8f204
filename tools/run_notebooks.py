"""Execute the notebooks in order, headless: executed copies and HTML renderings go to reports/.

python tools/run_notebooks.py [--notebooks all|00,03] [--timeout 7200]
Fast mode is the environment variable EMOLENS_FAST=1, read by every notebook's parameters cell.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def select(spec: str) -> list[Path]:
    books = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if spec == "all":
        return books
    wanted = {s.strip().zfill(2) for s in spec.split(",") if s.strip()}
    chosen = [b for b in books if b.name[:2] in wanted]
    missing = wanted - {b.name[:2] for b in chosen}
    if missing:
        raise SystemExit(f"no notebook numbered {sorted(missing)}; have {[b.name for b in books]}")
    return chosen


_interrupted: list[bool] = []


def _on_sigint(signum: int, frame: object) -> None:
    _interrupted.append(True)
    raise KeyboardInterrupt


class Progress:
    """Cell-level progress (cell k of n, elapsed) and the notebook's own progress bars, forwarded as plain
    lines: a tqdm bar inside the kernel arrives as stderr text with carriage returns; its latest state is
    printed at most every ``every`` seconds, so a long extraction is visibly alive in a terminal or CI log."""

    def __init__(self, name: str, n_cells: int, every: float = 20.0, quiet: bool = False) -> None:
        self.name, self.n, self.every, self.quiet = name, n_cells, every, quiet
        self.t0 = time.perf_counter()
        self.last = 0.0

    def elapsed(self) -> str:
        return f"{time.perf_counter() - self.t0:.0f} s"

    def cell_start(self, cell: object, cell_index: int, **_: object) -> None:
        if not self.quiet and getattr(cell, "cell_type", "") == "code":
            print(f"    {self.name}: cell {cell_index + 1}/{self.n} ({self.elapsed()})", flush=True)

    def stream(self, text: str) -> None:
        now = time.perf_counter()
        line = text.replace("\r", "\n").strip().split("\n")[-1].strip()
        if line and not self.quiet and now - self.last >= self.every:
            self.last = now
            print(f"      {line[:160]}", flush=True)


def _client(nb: object, timeout: int, cwd: Path, progress: Progress) -> object:
    from nbclient import NotebookClient

    class Client(NotebookClient):
        def output(self, outs, msg, display_id, cell_index):  # type: ignore[no-untyped-def]
            if msg["msg_type"] == "stream" and msg["content"].get("name") == "stderr":
                progress.stream(msg["content"].get("text", ""))
            return super().output(outs, msg, display_id, cell_index)

    return Client(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
                  on_cell_start=progress.cell_start)


def execute(path: Path, out_dir: Path, timeout: int, quiet: bool = False) -> float:
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    t = time.perf_counter()
    client = _client(nb, timeout, path.parent, Progress(path.stem, len(nb.cells), quiet=quiet))
    try:
        client.execute()
    except Exception:
        # nbclient installs its own SIGINT handler on its event loop, which shuts the kernel down and lets the
        # running cell fail with a ZMQ or assertion error; it leaves this future behind when it did so
        if _interrupted or getattr(client, "_async_cleanup_kernel_future", None) is not None:
            raise KeyboardInterrupt from None
        raise
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out_dir / path.name)
        html, _ = HTMLExporter().from_notebook_node(nb)
        (out_dir / path.with_suffix(".html").name).write_text(html)
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--notebooks", default="all")
    p.add_argument("--timeout", type=int, default=7200, help="seconds per cell")
    p.add_argument("--out", type=Path, default=ROOT / "reports")
    a = p.parse_args()
    signal.signal(signal.SIGINT, _on_sigint)
    mode = "fast" if os.environ.get("EMOLENS_FAST") == "1" else "full"
    books = select(a.notebooks)
    total = time.perf_counter()
    for i, b in enumerate(books, 1):
        print(f"[{i}/{len(books)}] {b.name} ({mode}) ...", flush=True)
        try:
            dt = execute(b, a.out, a.timeout)
        except KeyboardInterrupt:
            # Ctrl-C reaches the kernel too, so nbclient's own error (a ZMQ or assertion error) would hide it
            print(f"\n[{i}/{len(books)}] {b.name} interrupted by the user; the partial executed copy is in "
                  f"{a.out / b.name}", flush=True)
            return 130
        except Exception as e:  # report which notebook failed, keep the partial executed copy
            print(f"[{i}/{len(books)}] {b.name} FAILED: {type(e).__name__}: {str(e)[-2000:]}", flush=True)
            return 1
        print(f"[{i}/{len(books)}] {b.name} done in {dt:.0f} s", flush=True)
    print(f"all {len(books)} notebooks done in {time.perf_counter() - total:.0f} s; reports in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
