"""Everything an S2I build needs before it can be compiled: the I/O half of the frontend.

``check_users`` reads only image configs (store or registry, never layers) and refuses a
builder or runtime image whose scripts would run outside ``--allowed-uids``; the CLI calls it
before anything else. ``prepare`` then fills the context directory (source, scripts,
injections), reads the environment and finds the previous image, and returns the inputs of
the pure compiler (compile.py).
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from kiln.errors import KilnError
from kiln.frontend.s2i import labels as lbl
from kiln.frontend.s2i.compile import (
    UPLOAD_EMPTY_DIR,
    UPLOAD_EMPTY_FILE,
    UPLOAD_INJECTIONS,
    UPLOAD_RUNTIME_SCRIPTS,
    UPLOAD_SCRIPTS,
    UPLOAD_SRC,
    RuntimeInputs,
    S2IInputs,
)
from kiln.frontend.s2i.config import PathMapping, S2IRequest, parse_env_lines, parse_input_files
from kiln.frontend.s2i.scripts import (
    ASSEMBLE,
    ASSEMBLE_RUNTIME,
    RUN,
    SAVE_ARTIFACTS,
    Script,
    fetch_script,
    locate,
    locations,
    source_reader,
)
from kiln.frontend.s2i.source import fetch_source
from kiln.frontend.s2i.users import check_allowed, effective_user
from kiln.oci.models import ImageConfig

ConfigResolver = Callable[[str], ImageConfig]
#: The previous image of an incremental build: reference -> (reference to build from, or None; note)
PreviousFinder = Callable[[str], tuple[str | None, str]]
BUILDER_SUFFIX = "-s2i-builder"


class InjectionError(KilnError):
    """An --inject source that cannot be read."""


@dataclass(frozen=True)
class Users:
    builder: ImageConfig
    assemble: str
    runtime: ImageConfig | None = None
    runtime_user: str = ""


@dataclass
class Prepared:
    inputs: S2IInputs
    configs: dict[str, ImageConfig]  # every base image of the plan, by reference
    info: lbl.SourceInfo
    notes: list[str] = field(default_factory=list)


def _labels(config: ImageConfig) -> dict[str, str]:
    return dict(config.config.labels or {})


def check_users(request: S2IRequest, resolve: ConfigResolver) -> Users:
    """The assemble users, refused early (configs only) when outside --allowed-uids."""
    builder = resolve(request.builder)
    user = effective_user(request.assemble_user, _labels(builder), builder.config.user)
    check_allowed(user, request.allowed_uids, image=request.builder)
    if request.runtime_image is None:
        return Users(builder, user)
    runtime = resolve(request.runtime_image)
    runtime_user = effective_user(None, _labels(runtime), runtime.config.user)
    check_allowed(runtime_user, request.allowed_uids, image=request.runtime_image, role="assemble-runtime")
    return Users(builder, user, runtime, runtime_user)


def builder_tag(tag: str) -> str:
    """Where an extended build keeps its builder-stage image: ``REPO:TAG-s2i-builder``."""
    from kiln.registry.reference import Reference

    ref = Reference.parse(tag)
    if ref.digest is not None and ref.tag is None:
        raise KilnError(f"{tag}: an incremental build needs a tag, not a digest")
    return str(replace(ref, tag=(ref.tag or "latest")[: 128 - len(BUILDER_SUFFIX)] + BUILDER_SUFFIX, digest=None))


def previous_image_ref(request: S2IRequest) -> str | None:
    """The image whose save-artifacts an incremental build runs (None: not incremental)."""
    if not request.incremental:
        return None
    if not request.tag:
        raise KilnError("--incremental needs the output TAG (the previous image)")
    return builder_tag(request.tag) if request.runtime_image else request.tag


def prepare(
    request: S2IRequest,
    context: Path,
    users: Users,
    resolve: ConfigResolver,
    find_previous: PreviousFinder,
    *,
    scratch: Path | None = None,
) -> Prepared:
    """Fill ``context`` (an empty directory) and work out the compiler's inputs."""
    notes: list[str] = []
    src = context / UPLOAD_SRC
    info = fetch_source(
        request.source, src, ref=request.ref, context_dir=request.context_dir, force_copy=request.force_copy,
        exclude=request.exclude, scratch=scratch,
    )  # fmt: skip
    builder_labels = _labels(users.builder)
    read_source = source_reader(src)
    where = locations(request.scripts_url, lbl.scripts_url(builder_labels))
    scripts = locate((ASSEMBLE, RUN, SAVE_ARTIFACTS), where, fetch_script, read_source)
    _write_scripts(context / UPLOAD_SCRIPTS, scripts.values())
    for script in scripts.values():
        if script.name != SAVE_ARTIFACTS or request.incremental:
            notes.append(f"s2i: {script.name} from {script.origin}")
    (context / UPLOAD_EMPTY_DIR).mkdir(parents=True)
    (context / UPLOAD_EMPTY_FILE).write_bytes(b"")

    env = tuple(_source_env(src)) + request.env
    workdir = users.builder.config.working_dir or "/"
    injections = tuple(_inject(context, n, inj, workdir) for n, inj in enumerate(request.injections))
    configs = {request.builder: users.builder}

    previous = None
    wanted = previous_image_ref(request)
    if wanted is not None:
        previous, note = find_previous(wanted)
        notes.append(note)
        if previous is not None:
            configs[previous] = resolve(previous)

    runtime = None
    base_labels = builder_labels
    if request.runtime_image is not None and users.runtime is not None:
        runtime_labels = _labels(users.runtime)
        base_labels = runtime_labels
        where = locations(request.scripts_url, lbl.scripts_url(runtime_labels))
        rt_scripts = locate((ASSEMBLE_RUNTIME, RUN), where, fetch_script, read_source)
        _write_scripts(context / UPLOAD_RUNTIME_SCRIPTS, rt_scripts.values())
        notes += [f"s2i: {s.name} (runtime) from {s.origin}" for s in rt_scripts.values()]
        artifacts = request.runtime_artifacts or parse_input_files(builder_labels.get(lbl.ASSEMBLE_INPUT_FILES, ""))
        runtime = RuntimeInputs(
            image=request.runtime_image, user=users.runtime_user, workdir=users.runtime.config.working_dir or "/",
            scripts=rt_scripts, artifacts=artifacts,
        )  # fmt: skip
        configs[request.runtime_image] = users.runtime

    out_labels = lbl.output_labels(base_labels, builder_labels, builder_ref=request.builder, tag=request.tag, info=info)
    inputs = S2IInputs(
        builder=request.builder, user=users.assemble, destination=lbl.destination(builder_labels), scripts=scripts,
        env=env, labels=tuple(out_labels.items()), injections=injections, previous=previous, runtime=runtime,
    )  # fmt: skip
    return Prepared(inputs, configs, info, notes)


def _write_scripts(folder: Path, scripts: Iterable[Script]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for script in scripts:
        if script.content is not None:
            path = folder / script.name
            path.write_bytes(script.content)
            os.chmod(path, 0o755)  # s2i makes every installed script executable


def _source_env(src: Path) -> list[tuple[str, str]]:
    for name in (".s2i/environment", ".sti/environment"):
        path = src / name
        if path.is_file() and path.resolve().is_relative_to(src.resolve()):
            return parse_env_lines(path.read_text(encoding="utf-8", errors="replace"))
    return []


def _inject(context: Path, n: int, inj: PathMapping, workdir: str) -> PathMapping:
    """Copy an --inject source into the context; the mapping for a read-only bind mount."""
    host = Path(inj.source)
    dest = posixpath.normpath(posixpath.join(workdir, inj.dest))
    target = context / UPLOAD_INJECTIONS / str(n)
    try:
        if host.is_dir():
            shutil.copytree(host, target, symlinks=True)
            return PathMapping(f"{UPLOAD_INJECTIONS}/{n}", dest)
        target.mkdir(parents=True)
        shutil.copy2(host, target / host.name)
    except FileNotFoundError:
        raise InjectionError(f"--inject {inj.source}:{inj.dest}: {inj.source} does not exist") from None
    except OSError as e:
        raise InjectionError(f"--inject {inj.source}:{inj.dest}: {e.strerror}") from None
    return PathMapping(f"{UPLOAD_INJECTIONS}/{n}/{host.name}", posixpath.join(dest, host.name))

