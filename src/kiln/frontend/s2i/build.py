"""An S2I build from request to image: check, prepare, compile, run on kiln's one executor.

``build`` runs inside kiln's user namespace (the CLI enters it after ``check_users`` has
refused or passed the images, reading configs only). ``write_dockerfile`` is
``--as-dockerfile``: the same recipe written as a Dockerfile plus its context, nothing built.

An extended build (``--runtime-image``) also keeps its builder-stage image as
``TAG-s2i-builder``: the next ``--incremental`` build runs save-artifacts in it, since the
runtime image (the output) holds only the runtime artifacts.
"""

from __future__ import annotations

import contextlib
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from kiln.build.executor import BuildResult
from kiln.build.options import BuildOptions
from kiln.build.run_step import RunFailedError
from kiln.errors import BuildError, ImageNotFoundError, KilnError
from kiln.frontend.s2i.compile import BUILDER, MISSING_MARKER, compile_recipe
from kiln.frontend.s2i.config import S2IRequest
from kiln.frontend.s2i.prepare import ConfigResolver, Prepared, PreviousFinder, check_users, prepare
from kiln.frontend.s2i.recipe import Recipe, Run, to_dockerfile, to_plan
from kiln.oci.models import Descriptor, ImageConfig, Platform
from kiln.oci.store import Store
from kiln.registry.options import RegistryOptions

Note = Callable[[str], None]


class ScriptFailedError(BuildError):
    """An S2I script (assemble, assemble-runtime) failed or is missing; ``tail`` has its output."""

    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail


@dataclass
class S2IResult:
    result: BuildResult
    builder_image: Descriptor | None = None  # the builder stage of an extended build
    notes: list[str] = field(default_factory=list)

    @property
    def descriptor(self) -> Descriptor:
        return self.result.descriptor


def build(
    request: S2IRequest,
    store: Store,
    options: BuildOptions,
    *,
    quiet: bool = False,
    color: bool = False,
    note: Note | None = None,
) -> S2IResult:
    from kiln.build.driver import config_resolver, run_plan
    from kiln.frontend.s2i.previous import previous_finder

    say = note or (lambda _text: None)
    resolve = config_resolver(store, options)
    users = check_users(request, resolve)
    store.tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.tmp_dir, prefix="s2i-") as tmp:
        context = Path(tmp) / "context"
        context.mkdir()
        finder = previous_finder(store, request.incremental_pull_policy, options.registry)
        prepared = prepare(request, context, users, resolve, finder, scratch=Path(tmp))
        for text in prepared.notes:
            say(text)
        recipe = compile_recipe(prepared.inputs)
        plan = to_plan(recipe, prepared.configs, image_format=options.image_format)
        opts = replace(options, context_dir=context, dockerfile=None)
        try:
            result = run_plan(plan, store, opts, quiet=quiet, color=color)
        except RunFailedError as e:
            raise _script_error(e, recipe, prepared) from None
        builder_image = None
        if request.runtime_image is not None:
            # every step of the builder stage is cached by now: this only writes its image
            builder_plan = replace(plan, target=recipe.index(BUILDER))
            builder_image = run_plan(builder_plan, store, opts, quiet=True).descriptor
    return S2IResult(result, builder_image, prepared.notes)


def _script_error(e: RunFailedError, recipe: Recipe, prepared: Prepared) -> KilnError:
    for stage in recipe.stages:
        for op in stage.ops:
            if isinstance(op, Run) and shlex.join(op.argv) in e.message:
                name = op.argv[-1].removeprefix("s2i-")
                if f"{MISSING_MARKER} {name} at" in e.tail:
                    return ScriptFailedError(
                        f"image {stage.base} has no {name} script at {op.shown} (looked up: --scripts-url, "
                        ".s2i/bin in the source, the io.openshift.s2i.scripts-url label, /usr/libexec/s2i)"
                    )
                why = e.message.rpartition("successfully: ")[2] or "failed"
                return ScriptFailedError(f"{name} script {op.shown} failed in {stage.base}: {why}", e.tail)
    return e


# -- --as-dockerfile ---------------------------------------------------------------------------


def write_dockerfile(request: S2IRequest, path: Path, resolve: ConfigResolver, find_previous: PreviousFinder) -> Prepared:
    """Write the build as ``path`` (a Dockerfile) with its context (``upload/``) beside it."""
    users = check_users(request, resolve)
    folder = path.parent
    if (folder / "upload").exists():
        raise KilnError(f"{folder / 'upload'} already exists: --as-dockerfile needs a directory without one")
    folder.mkdir(parents=True, exist_ok=True)
    prepared = prepare(request, folder, users, resolve, find_previous)
    recipe = compile_recipe(prepared.inputs)
    header = (
        f"Generated by kiln s2i build from {request.source} with builder {request.builder}.\n"
        "Build it with this directory as the context, e.g. kiln build -f Dockerfile ."
    )
    path.write_text(to_dockerfile(recipe, header), encoding="utf-8")
    return prepared


def lookup_only(store_path: Path, registry: RegistryOptions, platform: Platform | None = None) -> tuple[ConfigResolver, PreviousFinder]:
    """Configs and previous images without writing anything: the store only if it already
    exists (opening a missing one would create it), else the registry (config blobs only)."""
    from kiln.build.image import load_image
    from kiln.registry.inspect import fetch_config
    from kiln.registry.reference import Reference

    want = platform or Platform()
    store = Store(store_path) if (store_path / "index.json").exists() else None

    def local(name: str) -> ImageConfig | None:
        if store is None:
            return None
        with contextlib.suppress(ImageNotFoundError):
            return load_image(store, store.resolve(name), want, what=name).config
        return None

    def resolve(ref: str) -> ImageConfig:
        name = str(Reference.parse(ref))
        found = local(name)
        return found if found is not None else fetch_config(Reference.parse(ref), registry, want)

    def find(ref: str) -> tuple[str | None, str]:
        name = str(Reference.parse(ref))
        if local(name) is not None:
            return name, f"s2i: incremental build from the previous image {name}"
        try:
            fetch_config(Reference.parse(ref), registry, want)
        except KilnError as e:
            return None, f"s2i: no previous image {name} ({e.message}): clean build"
        return name, f"s2i: incremental build from the previous image {name}"

    return resolve, find
