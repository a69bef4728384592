"""RUN: the argv (shell form, exec form, heredocs), the environment and the mounts.

The command line itself is never expanded by kiln: the shell does that when it runs. Only the
--mount options are expanded (with the stage's ENV and ARGs), as BuildKit does.

Heredocs follow dockerfile2llb's dispatchRun:

- `RUN <<EOF` (the command is just the heredoc): its content is the shell command, i.e.
  argv = SHELL + [content] (chomped for `<<-`; never expanded by kiln, whatever the quoting);
- the same with content starting with `#!`: BuildKit mounts the content as a file at
  /dev/pipes/NAME and runs it; kiln mounts a tmpfs at /dev/pipes, writes the script there
  with the shell's printf and executes it with its shebang interpreter (so, like BuildKit, the
  image needs the SHELL);
- anything else (`RUN python3 <<EOF`, several heredocs): the line and every heredoc body with
  its terminator are joined into one script for the shell, which handles the heredocs itself.
"""

from __future__ import annotations

import posixpath
import shlex
from typing import Literal, cast

from kiln.build.plan import RunMount, RunStep
from kiln.frontend.dockerfile.compile_state import Context, StageState, clean_path, join_workdir
from kiln.frontend.dockerfile.history import go_list, run_created_by
from kiln.frontend.dockerfile.instructions import Mount, RunInstruction, parse_heredoc_quietly
from kiln.frontend.dockerfile.parser import LineError, chomp_heredoc_content

HEREDOC_DIR = "/dev/pipes"
_MountType = Literal["bind", "cache", "tmpfs", "secret", "ssh"]
_Sharing = Literal["shared", "private", "locked"]
_Network = Literal["default", "none", "host"]


def compile_run(ctx: Context, state: StageState, ins: RunInstruction, stage: int) -> RunStep:
    if ins.security != "sandbox":
        raise LineError(f"RUN --security={ins.security} is not supported by kiln")
    env = state.scope.env
    mounts = [_mount(ctx, m, state, stage) for m in ins.expand_mounts(lambda w: ctx.expand(w, env))]
    argv, shown, extra = run_argv(ins, state.shell_argv)
    return RunStep(
        argv=tuple(argv),
        env=state.run_env(),
        user=state.user,
        workdir=state.workdir,
        mounts=(*mounts, *extra),
        network=cast(_Network, ins.network),
        created_by=run_created_by(shown, state.history_args()),
        line=ins.line,
    )


def run_argv(ins: RunInstruction, shell: tuple[str, ...]) -> tuple[list[str], list[str], list[RunMount]]:
    """(argv to run, argv BuildKit records in history, extra mounts the argv needs)."""
    args = list(ins.command)
    if not ins.heredocs:
        argv = [*shell, " ".join(args)] if ins.prepend_shell else args
        return argv, argv, []
    if len(args) != 1 or not ins.prepend_shell:
        raise LineError(f"parsing produced an invalid run command: {go_list(args)}")
    if parse_heredoc_quietly(args[0]) is None:
        script = args[0] + "".join("\n" + doc.content + doc.name for doc in ins.heredocs)
        return [*shell, script], [*shell, script], []
    doc = ins.heredocs[0]
    data = chomp_heredoc_content(doc.content) if doc.chomp else doc.content
    if not data.startswith("#!"):
        return [*shell, data], [*shell, data], []
    path = posixpath.join(HEREDOC_DIR, doc.name)
    interpreter = _shebang(data.partition("\n")[0])
    # the script arrives as $1, so no quoting of its content is involved
    wrapper = f"printf '%s' \"$1\" > {shlex.quote(path)} && exec {shlex.join([*interpreter, path])}"
    tmpfs = RunMount(type="tmpfs", target=HEREDOC_DIR)
    return [*shell, wrapper, "kiln-heredoc", data], [*shell, path], [tmpfs]


def _shebang(line: str) -> list[str]:
    """The kernel's reading of a `#!` line: the interpreter and at most one argument."""
    rest = line[2:].strip(" \t\r")
    interpreter, _, argument = rest.replace("\t", " ").partition(" ")
    if not interpreter:
        raise LineError("heredoc script has an empty #! line")
    argument = argument.strip(" ")
    return [interpreter, argument] if argument else [interpreter]


def _mount(ctx: Context, m: Mount, state: StageState, stage: int) -> RunMount:
    mount_type = cast(_MountType, m.type)
    if mount_type in ("secret", "ssh"):
        # secrets are referenced by id only; `source` names the secret as `id` does
        default_id = "default" if mount_type == "ssh" else posixpath.basename(m.target)
        return RunMount(
            type=mount_type, target=m.target, id=m.id or m.source or default_id, readonly=True,
            mode=m.mode, uid=m.uid, gid=m.gid, required=m.required, env=m.env or "",
        )  # fmt: skip
    if not m.target:
        raise LineError(f"--mount=type={m.type}: target is required")
    target = join_workdir(state.workdir, m.target)
    if target == "/":
        raise LineError(f'invalid mount target "{target}"')
    source_from = ctx.sources.mount_from(m.from_, stage) if m.from_ and mount_type != "tmpfs" else None
    return RunMount(
        type=mount_type,
        target=target,
        source=m.source,
        source_from=source_from,
        id=m.id or _cache_id(m.target) if mount_type == "cache" else m.id,
        readonly=m.readonly,
        sharing=cast(_Sharing, m.sharing or "shared"),
        mode=m.mode,
        uid=m.uid,
        gid=m.gid,
        size=m.size,
    )


def _cache_id(target: str) -> str:
    """BuildKit's default cache id: the target as written, cleaned (Go's path.Clean)."""
    return clean_path(target) if target.startswith("/") else posixpath.normpath(target)
