"""COPY and ADD: sources, destination and options, expanded and checked as BuildKit does.

Expanded with the stage's ENV and ARGs: the sources, the destination, --chown, --chmod and
ADD's --checksum; heredoc sources unless their delimiter was quoted (with quotes kept, as
BuildKit's ExpandRaw does). `--from` is not expanded: BuildKit refuses variables there
("define a new stage with FROM using ARG from global scope as a workaround").

ADD sources that are http(s) URLs go to `CopyStep.urls`; Git sources are not supported yet.
A relative destination stays relative: the executor joins it to `CopyStep.workdir`.
"""

from __future__ import annotations

from collections.abc import Mapping

from kiln.build.plan import ContextSource, CopyFrom, CopyStep, InlineFile
from kiln.errors import KilnError
from kiln.frontend.dockerfile.compile_state import Context, StageState
from kiln.frontend.dockerfile.instructions import AddInstruction, CopyInstruction, parse_chmod
from kiln.frontend.dockerfile.parser import LineError
from kiln.frontend.dockerfile.shell import ShellLexer

#: BuildKit expands heredoc file contents with the default escape and quotes left alone
_RAW_LEXER = ShellLexer("\\", skip_process_quotes=True)


def compile_copy(
    ctx: Context, state: StageState, ins: CopyInstruction | AddInstruction, stage: int
) -> CopyStep:
    is_add = isinstance(ins, AddInstruction)
    env = state.scope.env
    sources = [ctx.expand(s, env) for s in ins.sources]
    dest = ctx.expand(ins.dest, env)
    chown = ctx.expand(ins.chown, env) if ins.chown else ""
    chmod = ctx.expand(ins.chmod, env) if ins.chmod else ""
    if chmod:
        parse_chmod(chmod)  # raises LineError on a bad mode
    inline = tuple(InlineFile(c.path, expand_raw(c.data, env) if c.expand else c.data) for c in ins.contents)

    source_from: CopyFrom = ContextSource()
    if isinstance(ins, CopyInstruction) and ins.from_:
        check_static_from(ctx, ins.from_)
        source_from = ctx.sources.copy_from(ins.from_, stage)

    urls: list[str] = []
    local: list[str] = []
    for src in sources:
        if is_git_source(src):
            raise LineError(
                "ADD of a Git repository is not supported by kiln yet"
                if is_add
                else "source can't be a git ref for COPY"
            )
        if src.startswith(("http://", "https://")):
            if not is_add:
                raise LineError("source can't be a URL for COPY")
            urls.append(src)
        else:
            local.append(src)

    checksum = ""
    unpack: bool | None = None
    keep_git_dir = False
    if isinstance(ins, AddInstruction):
        checksum = ctx.expand(ins.checksum, env) if ins.checksum else ""
        unpack, keep_git_dir = ins.unpack, ins.keep_git_dir
        if checksum:
            _check_checksum(checksum, sources)

    words = ["ADD" if is_add else "COPY"]
    if isinstance(ins, CopyInstruction) and ins.parents:
        words.append("--parents")
    if chown:
        words.append(f"--chown={chown}")
    if chmod:
        words.append(f"--chmod={chmod}")
    words += sources
    words += [f"<<{c.path}" for c in ins.contents]
    words.append(dest)

    return CopyStep(
        sources=tuple(local),
        dest=dest,
        source_from=source_from,
        inline=inline,
        urls=tuple(urls),
        chown=chown or None,
        chmod=chmod or None,
        link=ins.link,
        excludes=ins.excludes,
        parents=isinstance(ins, CopyInstruction) and ins.parents,
        extract_archives=is_add and bool(local) and unpack is not False,
        checksum=checksum or None,
        keep_git_dir=keep_git_dir,
        workdir=state.workdir,
        created_by=" ".join(words) + " # buildkit",
        line=ins.line,
    )


def expand_raw(data: str, env: Mapping[str, str]) -> str:
    return _RAW_LEXER.process_word(data, env).result


def check_static_from(ctx: Context, ref: str) -> None:
    """BuildKit rejects a --from whose text expansion would change."""
    if ctx.expand(ref, {}) != ref:
        raise LineError(
            "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"
        )


def is_git_source(src: str) -> bool:
    """A source BuildKit would fetch with git (dfgitutil.ParseGitRef, the distinguishable cases)."""
    if src.startswith(("git://", "git@", "ssh://")):
        return True
    if src.startswith(("http://", "https://")):
        path = src.split("#", 1)[0].split("?", 1)[0]
        return path.endswith(".git")
    return False


def _check_checksum(checksum: str, sources: list[str]) -> None:
    if len(sources) != 1:
        raise LineError("checksum can't be specified for multiple sources")
    if not sources[0].startswith(("http://", "https://")):
        raise LineError("checksum requires HTTP(S) or Git sources")
    from kiln.build.fetch_url import parse_checksum  # imports httpx; only ADD --checksum needs it

    try:
        parse_checksum(checksum)
    except KilnError as e:
        raise LineError(e.message) from None
