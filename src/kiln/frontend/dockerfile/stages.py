"""ARG and ENV scoping: which variables each instruction of a stage sees, as BuildKit decides.

- ARGs before the first FROM (meta ARGs) form the global scope, together with the automatic
  platform ARGs (TARGETPLATFORM, BUILDARCH, ...). Only FROM lines see the global scope.
- Inside a stage an ARG must be declared again. Its value is the --build-arg if given, else its
  default (expanded in the stage's scope), else the global value of the same name (so a bare
  `ARG TARGETARCH` or `ARG VERSION` imports it).
- ENV and ARG write the same build environment and the later one wins: `ARG X=1` then `ENV X=2`
  gives 2 (the documented "ENV overrides ARG"); an ARG declared after an ENV of the same name
  overrides it for the following build steps (BuildKit does this too) but never the image config.
- Proxy build args (HTTP_PROXY, no_proxy, ...) reach RUN without being declared, and are kept
  apart (`Scope.proxy_env`) because they must stay out of history, cache keys and the image.

    >>> from kiln.frontend.dockerfile.instructions import parse_dockerfile
    >>> df = parse_dockerfile("ARG V=1\\nFROM alpine:$V\\nARG V\\nENV P=/opt/$V\\nRUN echo\\n")
    >>> globals_ = resolve_global_args(df.meta_args, {"V": "2"})
    >>> [dict(s.env) for s in stage_scopes(df.stages[0].instructions, global_args=globals_, build_args={"V": "2"})]
    [{}, {'V': '2'}, {'V': '2', 'P': '/opt/2'}]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kiln.frontend.dockerfile.instructions import ArgInstruction, EnvInstruction, Instruction
from kiln.frontend.dockerfile.shell import expand

PLATFORM_ARGS = (
    "TARGETPLATFORM", "TARGETOS", "TARGETARCH", "TARGETVARIANT",
    "BUILDPLATFORM", "BUILDOS", "BUILDARCH", "BUILDVARIANT",
)  # fmt: skip
PROXY_ARGS = frozenset(
    {"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
     "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"}
)  # fmt: skip


def platform_args(target: str, build: str | None = None) -> dict[str, str]:
    """The automatic platform ARGs for `os/arch[/variant]` platforms (build defaults to target).

    >>> platform_args("linux/arm64/v8", "linux/amd64")["TARGETVARIANT"]
    'v8'
    """
    out: dict[str, str] = {}
    for prefix, platform in (("TARGET", target), ("BUILD", build or target)):
        os_name, _, rest = platform.partition("/")
        arch, _, variant = rest.partition("/")
        out[prefix + "PLATFORM"] = platform
        out[prefix + "OS"] = os_name
        out[prefix + "ARCH"] = arch
        out[prefix + "VARIANT"] = variant
    return out


def resolve_global_args(
    meta_args: Sequence[ArgInstruction],
    build_args: Mapping[str, str],
    platform: Mapping[str, str] | None = None,
    escape: str = "\\",
) -> dict[str, str]:
    """The global scope FROM lines are expanded in: platform ARGs, then each meta ARG in order
    (its --build-arg, else its default expanded with the ARGs before it). Declared ARGs without
    any value are absent."""
    scope = dict(platform or {})
    for instruction in meta_args:
        for arg in instruction.args:
            if arg.key in build_args:
                scope[arg.key] = build_args[arg.key]
            elif arg.default is not None:
                scope[arg.key] = expand(arg.default, scope, escape)
    return scope


@dataclass(frozen=True)
class Scope:
    """The variables one instruction sees (before its own effect).

    env: what `$VAR` expands to, and the RUN process environment (ENV and declared ARGs);
    image_env: the ENV-only part, which goes to the image config;
    args: declared ARGs that have a value, in declaration order (what RUN history and cache keys
    record as the build args a step saw);
    proxy_env: proxy build args for RUN only.
    """

    env: Mapping[str, str] = field(default_factory=dict)
    image_env: Mapping[str, str] = field(default_factory=dict)
    args: Mapping[str, str] = field(default_factory=dict)
    proxy_env: Mapping[str, str] = field(default_factory=dict)

    def apply(
        self,
        instruction: Instruction,
        *,
        global_args: Mapping[str, str],
        build_args: Mapping[str, str],
        escape: str = "\\",
    ) -> Scope:
        """The scope after `instruction` (only ENV and ARG change it)."""
        if isinstance(instruction, EnvInstruction):
            env, image_env = dict(self.env), dict(self.image_env)
            # every pair is expanded with the scope from before the instruction:
            # `ENV a=1 b=$a` gives b the previous a
            for pair in instruction.pairs:
                key = expand(pair.key, self.env, escape)
                env.pop(key, None)  # re-insert so the environment keeps assignment order
                env[key] = image_env[key] = expand(pair.value, self.env, escape)
            return Scope(env, image_env, self.args, self.proxy_env)
        if isinstance(instruction, ArgInstruction):
            env, args = dict(self.env), dict(self.args)
            # each ARG sees the ones declared before it on the same line
            for arg in instruction.args:
                value: str | None
                if arg.key in build_args:
                    value = build_args[arg.key]
                elif arg.default is not None:
                    value = expand(arg.default, env, escape)
                else:
                    value = global_args.get(arg.key)
                if value is None:
                    continue
                env.pop(arg.key, None)
                args.pop(arg.key, None)
                env[arg.key] = args[arg.key] = value
            return Scope(env, self.image_env, args, self.proxy_env)
        return self


def stage_scopes(
    instructions: Sequence[Instruction],
    *,
    global_args: Mapping[str, str],
    build_args: Mapping[str, str],
    base_env: Mapping[str, str] | None = None,
    escape: str = "\\",
) -> list[Scope]:
    """One Scope per instruction of a stage, in order: what that instruction sees.

    `base_env` is the environment of the stage's base image (its config Env); `global_args` comes
    from `resolve_global_args`; `build_args` are the --build-arg values.
    """
    proxies = {k: v for k, v in build_args.items() if k in PROXY_ARGS}
    scope = Scope(dict(base_env or {}), dict(base_env or {}), {}, proxies)
    scopes = []
    for instruction in instructions:
        scopes.append(scope)
        scope = scope.apply(instruction, global_args=global_args, build_args=build_args, escape=escape)
    return scopes
