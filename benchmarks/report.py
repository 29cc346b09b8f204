"""What every benchmark ends with: its figures printed as JSON, and written to ``--json`` when given."""

from __future__ import annotations

import json
from typing import Any


def emit(out: dict[str, Any], path: str | None) -> None:
    print(json.dumps(out, indent=1))
    if path:
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
