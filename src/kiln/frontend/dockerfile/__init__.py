"""Dockerfile frontend: parse a Dockerfile (BuildKit-compatible) into typed stages.

    from kiln.frontend.dockerfile import parse_dockerfile, resolve_global_args, stage_scopes, expand

    df = parse_dockerfile(text, "Dockerfile")          # DockerfileError: "Dockerfile:12: message"
    global_args = resolve_global_args(df.meta_args, build_args, platform_args("linux/amd64"))
    base = expand(df.stages[0].base, global_args)       # FROM lines see only the global scope
    for instruction, scope in zip(stage.instructions, stage_scopes(stage.instructions, ...)):
        ...                                             # expand(word, scope.env, df.escape)

Layers: parser.py (text to AST, `dump.py` prints it as BuildKit does), instructions.py (AST to
typed instructions and stages), shell.py (variable expansion), stages.py (ARG/ENV scoping).
"""

from kiln.frontend.dockerfile.dump import dump, dump_result
from kiln.frontend.dockerfile.instructions import (
    AddInstruction,
    ArgDefinition,
    ArgInstruction,
    Chmod,
    CmdInstruction,
    CopyInstruction,
    Dockerfile,
    EntrypointInstruction,
    EnvInstruction,
    ExposeInstruction,
    FromInstruction,
    HealthcheckInstruction,
    Instruction,
    KeyValue,
    LabelInstruction,
    MaintainerInstruction,
    Mount,
    OnbuildInstruction,
    RunInstruction,
    ShellInstruction,
    SourceContent,
    Stage,
    StopsignalInstruction,
    UserInstruction,
    VolumeInstruction,
    WorkdirInstruction,
    parse_chmod,
    parse_dockerfile,
    parse_duration,
    parse_instruction,
    parse_mount,
)
from kiln.frontend.dockerfile.parser import (
    Directive,
    DockerfileError,
    Heredoc,
    LineError,
    Node,
    ParseResult,
    chomp_heredoc_content,
    parse,
    parse_heredoc,
)
from kiln.frontend.dockerfile.shell import (
    Expansion,
    ExpansionError,
    ShellLexer,
    expand,
    expand_with_matches,
    expand_words,
)
from kiln.frontend.dockerfile.stages import (
    PLATFORM_ARGS,
    PROXY_ARGS,
    Scope,
    platform_args,
    resolve_global_args,
    stage_scopes,
)

__all__ = [
    "PLATFORM_ARGS", "PROXY_ARGS", "AddInstruction", "ArgDefinition", "ArgInstruction", "Chmod",
    "CmdInstruction", "CopyInstruction", "Directive", "Dockerfile", "DockerfileError",
    "EntrypointInstruction", "EnvInstruction", "Expansion", "ExpansionError", "ExposeInstruction",
    "FromInstruction", "HealthcheckInstruction", "Heredoc", "Instruction", "KeyValue",
    "LabelInstruction", "LineError", "MaintainerInstruction", "Mount", "Node", "OnbuildInstruction",
    "ParseResult", "RunInstruction", "Scope", "ShellInstruction", "ShellLexer", "SourceContent",
    "Stage", "StopsignalInstruction", "UserInstruction", "VolumeInstruction", "WorkdirInstruction",
    "chomp_heredoc_content", "dump", "dump_result", "expand", "expand_with_matches", "expand_words",
    "parse", "parse_chmod", "parse_dockerfile", "parse_duration", "parse_heredoc",
    "parse_instruction", "parse_mount", "platform_args", "resolve_global_args", "stage_scopes",
]  # fmt: skip
