"""What the Dockerfile compiler knows while it walks one stage, and how it reports errors.

A stage starts from its base: an image's config (ENV, WORKDIR, USER, SHELL, ONBUILD), an
earlier stage's final state (including the ARGs that stage declared: BuildKit lets them leak
into stages built `FROM` it), or scratch. Each instruction then reads and updates a
`StageState`.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from kiln.build.plan import CopyFrom, StageSource
from kiln.errors import KilnError
from kiln.frontend.dockerfile.instructions import Dockerfile, Instruction
from kiln.frontend.dockerfile.parser import DockerfileError, LineError
from kiln.frontend.dockerfile.shell import ExpansionError, expand, expand_words
from kiln.frontend.dockerfile.stages import PROXY_ARGS, Scope
from kiln.oci.models import ImageConfig

DEFAULT_SHELL = ("/bin/sh", "-c")
#: BuildKit's system.DefaultPathEnv("linux"): added to a base environment without PATH.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: ARGs BuildKit keeps out of the build environment.
NON_ENV_ARGS = frozenset({"BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"})


def clean_path(path: str) -> str:
    """Go's path.Clean for an absolute path (`//a/../b/` -> `/b`)."""
    cleaned = posixpath.normpath("/" + path)
    return "/" + cleaned.lstrip("/")


def join_workdir(workdir: str, path: str) -> str:
    """An absolute, cleaned path: `path` if absolute, else relative to `workdir`."""
    return clean_path(path if path.startswith("/") else posixpath.join(workdir or "/", path))


@dataclass
class StageState:
    """The compiler's view of a stage between two instructions."""

    scope: Scope
    #: every ARG declared so far (inherited ones first), with the value it resolved to; BuildKit
    #: records these in RUN history
    declared_args: list[tuple[str, str | None]] = field(default_factory=list)
    workdir: str = "/"
    user: str = ""
    shell: tuple[str, ...] | None = None
    #: the config's OnBuild list as it stands (base triggers are consumed, then cleared)
    on_build: list[str] = field(default_factory=list)
    cmd: list[str] | None = None  # set by a CMD of this stage (then ENTRYPOINT keeps it)
    #: the base had no PATH: BuildKit adds its default to the environment and the image config
    default_path: bool = False

    @classmethod
    def from_config(cls, config: ImageConfig | None, proxies: Mapping[str, str]) -> StageState:
        """The starting state of a stage on an image (None: scratch)."""
        cfg = config.config if config is not None else None
        env: dict[str, str] = {}
        for item in (cfg.env if cfg else None) or []:
            key, _, value = item.partition("=")
            env[key] = value
        default_path = "PATH" not in env
        env.setdefault("PATH", DEFAULT_PATH)
        workdir = cfg.working_dir if cfg and cfg.working_dir else ""
        return cls(
            scope=Scope(env, dict(env), {}, dict(proxies)),
            workdir=join_workdir("/", workdir) if workdir else "/",
            user=(cfg.user if cfg else None) or "",
            shell=tuple(cfg.shell) if cfg and cfg.shell else None,
            on_build=list((cfg.on_build if cfg else None) or []),
            default_path=default_path,
        )

    def child(self) -> StageState:
        """The starting state of a stage built FROM this (finished) one."""
        return replace(
            self,
            scope=Scope(
                dict(self.scope.env), dict(self.scope.image_env), dict(self.scope.args), self.scope.proxy_env
            ),
            declared_args=list(self.declared_args),
            on_build=list(self.on_build),
            cmd=None,
            default_path=False,
        )

    @property
    def shell_argv(self) -> tuple[str, ...]:
        return self.shell or DEFAULT_SHELL

    def run_env(self) -> tuple[tuple[str, str], ...]:
        """The full environment of a RUN: ENV and declared ARGs, then undeclared proxy args."""
        env = [(k, v) for k, v in self.scope.env.items() if k not in NON_ENV_ARGS]
        env += [(k, v) for k, v in self.scope.proxy_env.items() if k not in self.scope.env]
        return tuple(env)

    def history_args(self) -> dict[str, str]:
        """The `|N K=V` part of RUN history: declared ARGs with their current values, in first
        declaration order. Proxy ARGs stay out (their URLs may carry credentials)."""
        out: dict[str, str] = {}
        for key, value in self.declared_args:
            if key not in PROXY_ARGS:
                out[key] = self.scope.env.get(key, value or "")
        return out


class Sources(Protocol):
    """How the compiler names other stages and images (implemented by the stage graph)."""

    def copy_from(self, ref: str, stage: int) -> CopyFrom:
        """`COPY --from=ref` in stage `stage` (raises LineError)."""

    def mount_from(self, ref: str, stage: int) -> StageSource:
        """`RUN --mount=from=ref` in stage `stage` (raises LineError)."""


@dataclass(frozen=True)
class Context:
    """Everything instruction compilers need beyond the stage's own state."""

    df: Dockerfile
    build_args: Mapping[str, str]
    global_args: Mapping[str, str]
    sources: Sources

    @property
    def escape(self) -> str:
        return self.df.escape

    def expand(self, word: str, env: Mapping[str, str]) -> str:
        return expand(word, env, self.df.escape)

    def expand_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        return expand_words(word, env, self.df.escape)

    @contextlib.contextmanager
    def located(self, instruction: Instruction) -> Iterator[None]:
        """Turn unlocated errors raised while compiling `instruction` into `FILE:LINE: ...`."""
        with located(self.df, instruction.line, instruction.end_line):
            yield


@contextlib.contextmanager
def located(df: Dockerfile, line: int, end_line: int | None = None) -> Iterator[None]:
    try:
        yield
    except DockerfileError:
        raise
    except (LineError, ExpansionError) as e:
        raise df.error(line, e.message, end_line) from None
    except KilnError as e:  # e.g. a base image that cannot be resolved
        raise df.error(line, e.message, end_line) from e
