"""Compiling an S2I build into a Recipe (then a Plan, or a Dockerfile): pure, no I/O.

The stages, all over one context directory laid out as s2i's ``--as-dockerfile`` lays it out
(``upload/src``, ``upload/scripts``, ``upload/runtime-scripts``, ``upload/injections/N``):

``cached`` (incremental builds with a previous image only)
    FROM the previous image; an empty, assemble-user-owned ``/.kiln-s2i/artifacts.tar``
    (COPY of an empty context file), then ``save-artifacts > /.kiln-s2i/artifacts.tar`` as the
    assemble user. A missing or failing save-artifacts leaves the file empty: a clean build
    follows, with a note in the log (s2i's behaviour).

``builder``
    FROM the builder: ENV (.s2i/environment, -E, -e); COPY uploaded scripts to
    DESTINATION/scripts and the source to DESTINATION/src, owned by the assemble user (group
    0, as s2i's Dockerfile does); USER; then one RUN as the assemble user that unpacks the
    artifacts tar (bind-mounted read-only from ``cached``) into DESTINATION/artifacts and
    execs assemble. Injected files are bind-mounted read-only into that RUN only, so they never
    reach a layer. Then CMD (the run script) and the labels, last, so that commit labels do
    not invalidate the cached assemble step.

``runtime`` (``--runtime-image`` only)
    FROM the runtime image: ENV; COPY uploaded assemble-runtime/run to WORKDIR/scripts; COPY
    --from=builder each artifact SRC to WORKDIR/DEST/basename(SRC), owned by the runtime
    user; USER; RUN assemble-runtime; CMD; labels.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from kiln.errors import KilnError
from kiln.frontend.s2i.config import PathMapping
from kiln.frontend.s2i.recipe import (
    Bind,
    Copy,
    Op,
    Recipe,
    RecipeStage,
    Run,
    SetCmd,
    SetEnv,
    SetLabels,
    SetUser,
)
from kiln.frontend.s2i.scripts import ASSEMBLE, ASSEMBLE_RUNTIME, RUN, SAVE_ARTIFACTS, Script
from kiln.frontend.s2i.users import chown_spec

# context layout
UPLOAD_SRC = "upload/src"
UPLOAD_SCRIPTS = "upload/scripts"
UPLOAD_RUNTIME_SCRIPTS = "upload/runtime-scripts"
UPLOAD_INJECTIONS = "upload/injections"
UPLOAD_EMPTY_DIR = "upload/kiln/empty"
UPLOAD_EMPTY_FILE = "upload/kiln/artifacts.tar"
# where save-artifacts writes in the cached stage, and where assemble's RUN sees it
SAVE_DIR = "/.kiln-s2i"
SAVED_TAR = SAVE_DIR + "/artifacts.tar"
ARTIFACTS_MOUNT = "/.kiln-s2i-artifacts"
#: printed by the wrappers when a script is not in the image (the CLI turns it into one error line)
MISSING_MARKER = "kiln-s2i: no such script:"

CACHED, BUILDER, RUNTIME = "cached", "builder", "runtime"


class S2ICompileError(KilnError):
    """An S2I build that cannot be expressed (e.g. a bad runtime artifact mapping)."""


@dataclass(frozen=True)
class RuntimeInputs:
    image: str
    user: str
    workdir: str
    scripts: Mapping[str, Script]  # assemble-runtime, run
    artifacts: tuple[PathMapping, ...]


@dataclass(frozen=True)
class S2IInputs:
    builder: str
    user: str  # the assemble user ("" = the image's USER, root when unset)
    destination: str
    scripts: Mapping[str, Script]  # assemble, run (and save-artifacts when incremental)
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    injections: tuple[PathMapping, ...] = ()  # context path -> absolute path in the image
    previous: str | None = None  # image whose save-artifacts runs (incremental)
    runtime: RuntimeInputs | None = None


def script_path(script: Script, upload_dir: str) -> str:
    """Where a script is inside the image: its image path, or where its upload is copied."""
    if script.image_path is not None:
        return script.image_path
    return posixpath.join(upload_dir, script.name)


def compile_recipe(inputs: S2IInputs) -> Recipe:
    stages = []
    if inputs.previous is not None:
        stages.append(_cached_stage(inputs, inputs.previous))
    stages.append(_builder_stage(inputs))
    if inputs.runtime is not None:
        stages.append(_runtime_stage(inputs, inputs.runtime))
    return Recipe(tuple(stages))


def _cached_stage(inputs: S2IInputs, previous: str) -> RecipeStage:
    scripts_dir = posixpath.join(inputs.destination, "scripts")
    chown = chown_spec(inputs.user)
    ops: list[Op] = []
    save = inputs.scripts[SAVE_ARTIFACTS]
    if save.uploaded:
        ops.append(Copy((posixpath.join(UPLOAD_SCRIPTS, SAVE_ARTIFACTS),), posixpath.join(scripts_dir, SAVE_ARTIFACTS), chown))
    ops.append(Copy((UPLOAD_EMPTY_FILE,), SAVED_TAR, chown))
    if inputs.user:
        ops.append(SetUser(inputs.user))
    path = script_path(save, scripts_dir)
    q, tar = shlex.quote(path), shlex.quote(SAVED_TAR)
    script = (
        f"if [ -e {q} ]; then {q} > {tar} || {{ echo \"kiln-s2i: save-artifacts failed (exit code $?): "
        f"building without artifacts\" >&2; : > {tar}; }}; else echo \"kiln-s2i: the previous image has no "
        f"save-artifacts script at \"{q}\": building without artifacts\" >&2; fi"
    )
    ops.append(Run(("/bin/sh", "-c", script, "s2i-save-artifacts"), f"{path} > {SAVED_TAR}"))
    return RecipeStage(CACHED, previous, tuple(ops))


def _builder_stage(inputs: S2IInputs) -> RecipeStage:
    dest = inputs.destination
    scripts_dir = posixpath.join(dest, "scripts")
    chown = chown_spec(inputs.user)
    ops: list[Op] = []
    if inputs.env:
        ops.append(SetEnv(inputs.env))
    if any(s.uploaded for s in inputs.scripts.values()):
        ops.append(Copy((UPLOAD_SCRIPTS,), scripts_dir + "/", chown))
    ops.append(Copy((UPLOAD_SRC,), posixpath.join(dest, "src") + "/", chown))
    artifacts_dir = posixpath.join(dest, "artifacts")
    if inputs.previous is not None:
        ops.append(Copy((UPLOAD_EMPTY_DIR,), artifacts_dir + "/", chown))
    if inputs.user:
        ops.append(SetUser(inputs.user))
    mounts = []
    unpack = ""
    if inputs.previous is not None:
        mounts.append(Bind(ARTIFACTS_MOUNT, SAVE_DIR, CACHED))
        tar, into = shlex.quote(ARTIFACTS_MOUNT + "/artifacts.tar"), shlex.quote(artifacts_dir)
        unpack = f"if [ -s {tar} ]; then tar -xf {tar} -C {into} || exit 1; fi; "
    mounts += [Bind(inj.dest, inj.source) for inj in inputs.injections]
    assemble = script_path(inputs.scripts[ASSEMBLE], scripts_dir)
    ops.append(Run(("/bin/sh", "-c", _require(assemble, ASSEMBLE) + unpack + f"exec {shlex.quote(assemble)}", "s2i-assemble"), assemble, tuple(mounts)))
    ops.append(SetCmd((script_path(inputs.scripts[RUN], scripts_dir),)))
    if inputs.labels:
        ops.append(SetLabels(inputs.labels))
    return RecipeStage(BUILDER, inputs.builder, tuple(ops))


def _runtime_stage(inputs: S2IInputs, rt: RuntimeInputs) -> RecipeStage:
    if not rt.artifacts:
        raise S2ICompileError(
            f"runtime image {rt.image}: no runtime artifacts to copy: give --runtime-artifact SRC:DEST or set the "
            "builder's io.openshift.s2i.assemble-input-files label"
        )
    scripts_dir = posixpath.join(rt.workdir, "scripts")
    chown = chown_spec(rt.user)
    ops: list[Op] = []
    if inputs.env:
        ops.append(SetEnv(inputs.env))
    if any(s.uploaded for s in rt.scripts.values()):
        ops.append(Copy((UPLOAD_RUNTIME_SCRIPTS,), scripts_dir + "/", chown))
    for art in rt.artifacts:
        src = posixpath.normpath(art.source)
        if not art.source.startswith("/") or src == "/":
            raise S2ICompileError(f"runtime artifact {art.source}:{art.dest}: the source must be an absolute path in the builder image")
        if posixpath.isabs(art.dest):
            raise S2ICompileError(f"runtime artifact {art.source}:{art.dest}: the destination must be relative to the runtime image's WORKDIR")
        ops.append(Copy((src,), posixpath.normpath(posixpath.join(rt.workdir, art.dest, posixpath.basename(src))), chown, from_stage=BUILDER))
    if rt.user:
        ops.append(SetUser(rt.user))
    runner = script_path(rt.scripts[ASSEMBLE_RUNTIME], scripts_dir)
    argv = ("/bin/sh", "-c", _require(runner, ASSEMBLE_RUNTIME) + f"exec {shlex.quote(runner)}", "s2i-assemble-runtime")
    ops.append(Run(argv, runner))
    ops.append(SetCmd((script_path(rt.scripts[RUN], scripts_dir),)))
    if inputs.labels:
        ops.append(SetLabels(inputs.labels))
    return RecipeStage(RUNTIME, rt.image, tuple(ops))


def _require(path: str, name: str) -> str:
    q = shlex.quote(path)
    return f"if [ ! -e {q} ]; then echo \"{MISSING_MARKER} {name} at \"{q} >&2; exit 127; fi; "
