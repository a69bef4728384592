"""Canonical JSON: what kiln writes is byte-for-byte deterministic (sorted keys, no spaces)."""

from __future__ import annotations

import json
from typing import Any


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
