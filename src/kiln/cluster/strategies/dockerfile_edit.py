"""OpenShift's Docker-strategy edits of a Dockerfile, on the text: ENV after every FROM, the last FROM's image replaced.

Done on the source text (located with kiln's parser) rather than on the plan, so `kiln build
--config --dry-run` shows, and the build history records, the Dockerfile that was really built.
"""

from __future__ import annotations

from collections.abc import Sequence

from kiln.frontend.dockerfile.parser import parse


def quote_env_value(value: str) -> str:
    """A double-quoted ENV word: the Dockerfile shell lexer's escapes for `"`, `\\` and `$`."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", "\\\n")
    return f'"{escaped}"'


def edit_dockerfile(text: str, *, env: Sequence[tuple[str, str]] = (), from_image: str | None = None, filename: str = "Dockerfile") -> str:
    if not env and not from_image:
        return text
    result = parse(text, filename)
    froms = [n for n in result.ast.children if n.keyword == "from"]
    if not froms:
        return text
    lines = text.splitlines()
    env_line = "ENV " + " ".join(f"{k}={quote_env_value(v)}" for k, v in env) if env else None
    # edit bottom-up so earlier line numbers stay valid
    for i, node in reversed(list(enumerate(froms))):
        start, end = node.start_line - 1, node.end_line
        if env_line is not None:
            lines.insert(end, env_line)
        if from_image and i == len(froms) - 1:
            args = [a.value for a in node.args()]
            alias = f" AS {args[2]}" if len(args) >= 3 and args[1].lower() == "as" else ""
            flags = "".join(f"{f} " for f in node.flags)
            lines[start:end] = [f"FROM {flags}{from_image}{alias}"]
    return "\n".join(lines) + "\n"
