"""Developer entry point for the sandbox (used by its tests, handy for debugging).

    python -m kiln.sandbox mapping                  # enter kiln's user namespace, print its maps
    python -m kiln.sandbox unshare CMD ARGS...      # run CMD as uid 0 in kiln's user namespace
    python -m kiln.sandbox run SPEC.json [--result OUT.json]

``run`` reads a ProcessSpec as JSON (``ProcessSpec.to_json`` keys, plus ``timeout`` seconds and
``stdin`` text), streams the command's output to stdout line by line, writes the ProcessResult
as JSON to OUT.json and exits with the command's exit code (125 if the sandbox failed).
"""

from __future__ import annotations

import json
import os
import sys

from kiln.errors import KilnError

from .process import run
from .spec import ProcessSpec
from .userns import ensure_userns, in_userns_mapping

USAGE = "usage: python -m kiln.sandbox mapping | unshare CMD [ARGS...] | run SPEC.json [--result OUT.json]"


def _print_line(line: bytes) -> None:
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()


def _run(args: list[str]) -> int:
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    result_path = None
    if len(args) == 3 and args[1] == "--result":
        result_path = args[2]
    ensure_userns()  # before reading the spec: with "-" the re-executed child needs stdin unread
    with open(args[0]) if args[0] != "-" else sys.stdin as f:
        spec = ProcessSpec.from_json(json.load(f))
    spec.on_output = _print_line
    try:
        result = run(spec)
    except KilnError as exc:
        print(f"kiln: {exc}", file=sys.stderr)
        if result_path:
            with open(result_path, "w") as out:
                json.dump({"error": str(exc)}, out)
        return 125
    if result_path:
        with open(result_path, "w") as out:
            json.dump(
                {
                    "exit_code": result.exit_code,
                    "signal": result.signal,
                    "timed_out": result.timed_out,
                    "duration": result.duration,
                    "placeholders": list(result.placeholders),
                    "output_tail": result.output_tail.decode(errors="replace"),
                },
                out,
            )
    return result.exit_code


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(USAGE, file=sys.stderr)
        return 2
    command, rest = args[0], args[1:]
    if command == "mapping":
        ensure_userns()
        m = in_userns_mapping()
        print(json.dumps({"uid_map": [r.line() for r in m.uids], "gid_map": [r.line() for r in m.gids], "full": m.is_full}))
        return 0
    if command == "unshare" and rest:
        ensure_userns()
        try:
            os.execvp(rest[0], rest)
        except OSError as exc:
            print(f"kiln: cannot run {rest[0]}: {exc.strerror}", file=sys.stderr)
            return 127
    if command == "run":
        return _run(rest)
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
