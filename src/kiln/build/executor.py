"""The one executor: runs any plan, whatever frontend made it.

For each stage the plan needs (dependencies first; independent stages in parallel) it starts
from the base image, then for each step looks up the step cache, and on a miss runs the step:
COPY writes a layer straight from its sources, RUN runs in the sandbox on an overlay of the
stage's snapshots and turns the upper directory into a layer, metadata steps edit the config.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, cast

from kiln.build.annotations import base_annotations
from kiln.build.cache import StepCache, step_key
from kiln.build.config_edit import add_history, apply_change, for_format
from kiln.build.context import BuildContext
from kiln.build.copy import copy_cache_digest, write_copy_layer
from kiln.build.diff import write_upper_as_layer
from kiln.build.fetch_url import UrlFetcher
from kiln.build.image import Image, Layer, chain_ids, load_image, write_image
from kiln.build.log import BuildLog, StepLog
from kiln.build.options import BuildOptions
from kiln.build.overlay import merged_view, overlay_usable
from kiln.build.plan import (
    ConfigChange,
    ContextSource,
    CopyStep,
    ImageSource,
    MetaStep,
    Plan,
    RunStep,
    ScratchSource,
    Stage,
    StageSource,
    Step,
)
from kiln.build.remote_cache import RemoteCache
from kiln.build.rootpath import resolve_in_root
from kiln.build.run_step import run_step
from kiln.build.snapshots import Snapshots, discard, fetch_from_sources
from kiln.build.users import resolve_user
from kiln.build.walkdiff import StatIndex, materialize, write_changes
from kiln.errors import BuildError, ImageNotFoundError, KilnError
from kiln.oci.digest import Digest
from kiln.oci.layer_writer import LayerWriter
from kiln.oci.models import Descriptor, Platform
from kiln.oci.store import Store
from kiln.registry.lazy import fetch_metadata
from kiln.registry.pull import named_digest
from kiln.registry.reference import Reference
from kiln.sandbox.spec import OverlayRootfs

SCRATCH_KEY = Digest.of(b"kiln:scratch")


@dataclass
class StageResult:
    image: Image
    key: str


@dataclass
class BuildResult:
    descriptor: Descriptor
    image: Image
    stage_times: dict[str, float] = field(default_factory=dict)
    cached_steps: int = 0
    run_steps: int = 0
    #: every image a stage of the build started from (normalized reference -> the digest it named
    #: then), in plan order; what an ImageChange trigger of a Dockerfile in git gets to watch
    bases: dict[str, str] = field(default_factory=dict)


class Executor:
    def __init__(self, store: Store, options: BuildOptions, log: BuildLog) -> None:
        self.store = store
        self.options = options
        self.log = log
        self.snapshots = Snapshots(store, fetch_from_sources(store, options.registry))
        self.cache = StepCache(store, ttl_seconds=options.cache_ttl_seconds)
        self.remote = RemoteCache(store, options.cache_from, options.cache_to, options.registry)
        self._pull_lock = threading.Lock()
        self._counts_lock = threading.Lock()
        self.cached_steps = 0
        self.run_steps = 0
        self._created = _timestamp(options.source_date_epoch)
        self._build_context: BuildContext | None = None
        self._fetcher: UrlFetcher | None = None
        self._plan_source: Plan | None = None
        self._resolved: dict[tuple[str, str], Descriptor] = {}  # a build sees one digest per reference

    # -- plan -----------------------------------------------------------------------------

    def build(self, plan: Plan) -> BuildResult:
        try:
            return self._build(plan)
        finally:
            if self._fetcher is not None:
                self._fetcher.close()

    def _build(self, plan: Plan) -> BuildResult:
        self._plan_source = plan
        self.remote.load()
        for note in self.remote.notes:
            self.log.info(note)
        needed = plan.needed_stages()
        futures: dict[int, Future[StageResult]] = {}
        times: dict[str, float] = {}
        with self.store.lock_shared(), ThreadPoolExecutor(max_workers=max(1, min(4, len(needed)))) as pool:
            for index in needed:
                stage = plan.stages[index]
                futures[index] = pool.submit(self._build_stage_timed, plan, stage, futures, times)
            result = futures[plan.target].result()
            for f in futures.values():
                f.result()  # surface a failure in a stage the target did not wait for
            image = result.image
            fmt = plan.image_format
            image.config = for_format(image.config, fmt)
            if self.options.labels:
                for k, v in sorted(self.options.labels.items()):
                    apply_change(image.config, ConfigChange("label", [k, v]))
            # Docker's schema2 manifest has no annotations field (BuildKit refuses them there too).
            annotations = base_annotations(plan, lambda ref: self.resolve_image(ref, plan.platform)) if fmt == "oci" else {}
            desc = write_image(self.store, image, fmt, annotations)
            exported = self.remote.export()
            if exported is not None:
                self.log.info(f"cache exported to {self.options.cache_to} ({exported.digest})")
        return BuildResult(desc, image, times, self.cached_steps, self.run_steps, self._stage_bases(plan, needed))

    def _build_stage_timed(self, plan: Plan, stage: Stage, futures: dict[int, Future[StageResult]], times: dict[str, float]) -> StageResult:
        t0 = time.monotonic()
        try:
            return self._build_stage(plan, stage, futures)
        finally:
            times[stage.label] = time.monotonic() - t0

    def _build_stage(self, plan: Plan, stage: Stage, futures: dict[int, Future[StageResult]]) -> StageResult:
        image, key = self._base(plan, stage, futures)
        total = len(stage.steps)
        no_cache = self.options.no_cache or stage.name in self.options.no_cache_stages
        for n, step in enumerate(stage.steps, 1):
            label = f"[{stage.label} {n}/{total}] {_one_line(step.created_by)}"
            inputs = self._cache_inputs(step, futures, plan.platform)
            key = step_key(key, step, **inputs)
            record = None if no_cache else (self.cache.get(key) or self.remote.get(key))
            if isinstance(step, MetaStep) and not _needs_fs(step):
                # Config-only steps go through the cache too, so an unchanged rebuild reproduces
                # the same history timestamps and therefore the same image digest.
                if record is not None:
                    image.config = record.config
                    self.remote.add(key, None, image.config)
                    continue
                for change in step.changes:
                    apply_change(image.config, change)
                add_history(image.config, self._created, step.created_by, empty_layer=True)
                image.config.created = self._created
                self.cache.put(key, None, image.config)
                self.remote.add(key, None, image.config)
                continue
            steplog = self.log.step(label)
            if record is not None:
                if record.layer is not None:
                    image.layers.append(record.layer)
                image.config = record.config
                self.remote.add(key, record.layer, image.config)
                steplog.cached()
                with self._counts_lock:
                    self.cached_steps += 1
                continue
            try:
                layer = self._execute(plan, stage, step, image, futures, steplog)
            except KilnError as e:
                # Lower layers know only the line; name the file too (Dockerfile:12: ...).
                prefix = f"line {step.line}: "
                if step.line and e.message.startswith(prefix):
                    e.message = f"{plan.where(step.line)}: {e.message.removeprefix(prefix)}"
                    e.args = (e.message,)
                steplog.error(e.message)
                raise
            if layer is not None:
                image.layers.append(layer)
            add_history(image.config, self._created, step.created_by, empty_layer=layer is None)
            image.config.created = self._created
            self.cache.put(key, layer, image.config)
            self.remote.add(key, layer, image.config)
            steplog.done()
            with self._counts_lock:
                self.run_steps += 1
        return StageResult(image, key)

    # -- bases --------------------------------------------------------------------------

    def _base(self, plan: Plan, stage: Stage, futures: dict[int, Future[StageResult]]) -> tuple[Image, str]:
        base = stage.base
        if isinstance(base, ScratchSource):
            img = Image()
            img.config.architecture = plan.platform.architecture
            img.config.os = plan.platform.os
            img.config.variant = plan.platform.variant
            return img, SCRATCH_KEY
        if isinstance(base, StageSource):
            result = futures[base.stage].result()
            return result.image.copy(), result.key
        steplog = self.log.step(f"[{stage.label}] FROM {base.ref}")
        image = self.resolve_image(base.ref, plan.platform)
        steplog.done()
        assert image.manifest_digest is not None
        return image, image.manifest_digest

    def _stage_bases(self, plan: Plan, stages: list[int]) -> dict[str, str]:
        refs = [b.ref for b in (plan.stages[i].base for i in sorted(stages)) if isinstance(b, ImageSource)]
        names = [str(Reference.parse(r)) for r in refs]
        with self._pull_lock:  # _base resolved each one with the plan's platform
            return {name: named_digest(self._resolved[(name, str(plan.platform))]) for name in names}

    def resolve_image(self, ref: str, platform: Platform) -> Image:
        """An image from the store, or its manifest and config from the registry.

        Layers are not pulled here: a step that hits the cache never needs them, and
        the snapshotter fetches the ones a running step does need.
        """
        name = str(Reference.parse(ref))
        with self._pull_lock:
            desc = self._resolved.get((name, str(platform)))
            if desc is None and self.options.pull != "always":
                with contextlib.suppress(ImageNotFoundError):
                    desc = self.store.resolve(name)
            if desc is None:
                if self.options.pull == "never":
                    raise ImageNotFoundError(f"{ref}: not in the local store and pulling is disabled")
                desc = fetch_metadata(Reference.parse(ref), self.store, platform=platform, options=self.options.registry)
            self._resolved[(name, str(platform))] = desc
        image = load_image(self.store, desc, platform, what=name)
        image.config.history = image.config.history or []
        return image

    # -- cache inputs ---------------------------------------------------------------------

    def _cache_inputs(self, step: Step, futures: dict[int, Future[StageResult]], platform: Platform) -> dict[str, str]:
        if isinstance(step, CopyStep):
            src = step.source_from
            if isinstance(src, StageSource):
                return {"source": futures[src.stage].result().key}
            if isinstance(src, ImageSource):
                return {"source": str(self.resolve_image(src.ref, platform).manifest_digest)}
            root = self.options.context_dir or self.snapshots.scratch
            return {"source": copy_cache_digest(step, root, self._context() if step.sources else None, fetcher=self._url_fetcher())}
        if isinstance(step, RunStep):
            out = {}
            for i, m in enumerate(step.mounts):
                if m.type != "bind":
                    continue
                if isinstance(m.source_from, StageSource):
                    out[f"mount{i}"] = futures[m.source_from.stage].result().key
                elif m.source_from is None and self.options.context_dir is not None:
                    # what a context bind mount shows is an input of the step, like COPY's sources
                    probe = CopyStep(sources=(m.source or ".",), dest="/mnt/")
                    out[f"mount{i}"] = copy_cache_digest(probe, self.options.context_dir, self._context())
            return out
        return {}

    def _context_dir(self, step: CopyStep) -> Path:
        if self.options.context_dir is None:
            raise BuildError(f"{self.where(step.line)}: COPY needs a build context")
        return self.options.context_dir

    def _context(self) -> BuildContext | None:
        """One BuildContext per build, so its ignore rules are read once and its stat cache is shared."""
        if self.options.context_dir is None:
            return None
        with self._counts_lock:
            if self._build_context is None:
                self._build_context = BuildContext.for_store(self.options.context_dir, self.store, dockerfile=self.options.dockerfile)
            return self._build_context

    def where(self, line: int) -> str:
        return self._plan_source.where(line) if self._plan_source is not None else f"line {line}"

    def _url_fetcher(self) -> UrlFetcher:
        """One per build: ADD URLs are downloaded once for the cache key and the layer both."""
        with self._counts_lock:
            if self._fetcher is None:
                self._fetcher = UrlFetcher(self.snapshots.scratch)
            return self._fetcher

    # -- running steps ------------------------------------------------------------------

    def _execute(self, plan: Plan, stage: Stage, step: Step, image: Image, futures: dict[int, Future[StageResult]], steplog: StepLog) -> Layer | None:
        lowers = self.snapshots.ensure(image.layers)
        if isinstance(step, MetaStep):
            return self._meta_with_fs(step, image, lowers)
        if isinstance(step, CopyStep):
            return self._copy(plan, step, image, lowers, futures)
        if not overlay_usable(self.snapshots.scratch):
            return self._run_walk(step, image, lowers, futures, steplog)

        def run_on_overlay(upper: Path, work: Path) -> None:
            stack = lowers or [self.snapshots.empty_lower()]
            rootfs = OverlayRootfs(tuple(str(p) for p in reversed(stack)), str(upper), str(work))
            run_step(self, step, image, rootfs, futures, steplog)

        return self._layer_in_upper(image, run_on_overlay)

    def _run_walk(self, step: RunStep, image: Image, lowers: list[Path], futures: dict[int, Future[StageResult]], steplog: StepLog) -> Layer:
        """Without overlayfs: copy the snapshots into a plain root, run, and diff by walking it."""
        with self._scratch_dir("walk-") as base:
            root = base / "rootfs"
            root.mkdir()
            try:
                materialize(lowers, root)
                before = StatIndex.scan(root, lowers)
                run_step(self, step, image, root, futures, steplog)
                layer = self._layer_from(lambda w: write_changes(root, before, w))
            finally:
                discard(root)
        self.snapshots.ensure([*image.layers, layer])
        return layer

    def _layer_in_upper(self, image: Image, fill: Callable[[Path, Path], None]) -> Layer:
        """Let ``fill`` change a fresh (upper, work) pair; its upper becomes the layer and the snapshot."""
        upper, work = self.snapshots.new_upper()
        try:
            fill(upper, work)
            layer = self._layer_from(lambda w: write_upper_as_layer(upper, w))
            self._adopt(image, layer, upper)
        except BaseException:
            discard(upper.parent)
            raise
        return layer

    def _meta_with_fs(self, step: MetaStep, image: Image, lowers: list[Path]) -> Layer | None:
        """WORKDIR: the directory is created (as a layer) when the image does not have it.

        Parents that exist keep their metadata in the layer (a copy-up, as overlayfs would
        write it); only the missing components are new (0755, owned by the current USER).
        """
        for change in step.changes:
            apply_change(image.config, change)
        workdir = image.config.config.working_dir or "/"
        with merged_view(lowers, self.snapshots.scratch) as view:
            real = resolve_in_root(view, workdir)
            parts = [p for p in real.split("/") if p]
            uid, gid, _ = resolve_user(view, image.config.config.user or "0")
            dirs: list[tuple[str, int, int, int, tuple[int, int] | None]] = []
            for i in range(len(parts)):
                rel = "/".join(parts[: i + 1])
                try:
                    st = os.lstat(view / rel)
                except FileNotFoundError:
                    dirs.append((rel, 0o755, uid, gid, None))
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    raise BuildError(f"{self.where(step.line)}: WORKDIR {workdir}: /{rel} is not a directory")
                dirs.append((rel, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, (st.st_atime_ns, st.st_mtime_ns)))
        if all(times is not None for *_, times in dirs):
            return None
        return self._layer_in_upper(image, lambda upper, _work: _make_dirs(upper, dirs))

    def _copy(self, plan: Plan, step: CopyStep, image: Image, lowers: list[Path], futures: dict[int, Future[StageResult]]) -> Layer:
        with contextlib.ExitStack() as stack:
            src_root: Path
            context: BuildContext | None = None
            src = step.source_from
            if isinstance(src, StageSource):
                other = futures[src.stage].result().image
                src_root = stack.enter_context(merged_view(self.snapshots.ensure(other.layers), self.snapshots.scratch))
            elif isinstance(src, ImageSource):
                other = self.resolve_image(src.ref, plan.platform)
                src_root = stack.enter_context(merged_view(self.snapshots.ensure(other.layers), self.snapshots.scratch))
            elif isinstance(src, ContextSource) and step.sources:
                src_root = self._context_dir(step)
                context = self._context()
            else:
                src_root = stack.enter_context(self._scratch_dir("nosrc-"))
            view = stack.enter_context(merged_view(lowers, self.snapshots.scratch))
            # --link: the layer must not depend on what is below it; only --chown names are looked up.
            dest = None if step.link else view
            epoch = self.options.source_date_epoch
            layer = self._layer_from(
                lambda w: write_copy_layer(
                    step, src_root, dest, w, context=context, source_date_epoch=epoch, user_rootfs=view,
                    tmp_dir=self.snapshots.scratch, fetcher=self._url_fetcher(),
                )
            )
        self.snapshots.ensure([*image.layers, layer])
        return layer

    def _layer_from(self, fill: Callable[[LayerWriter], object]) -> Layer:
        opts = self.options
        with self.store.blob_writer() as blob:
            writer = LayerWriter(cast(BinaryIO, blob), opts.compression, opts.compression_level, opts.source_date_epoch, fmt=opts.image_format)
            with writer:
                fill(writer)
            info = writer.result()
        if blob.digest != info.digest:
            raise KilnError(f"layer writer and store disagree on a digest ({info.digest} vs {blob.digest})")
        return Layer(info.digest, info.diff_id, info.size, info.media_type)

    def _adopt(self, image: Image, layer: Layer, upper: Path) -> None:
        chain = chain_ids([*image.layers, layer])[-1]
        self.snapshots.adopt(upper, chain)


    @contextlib.contextmanager
    def _scratch_dir(self, prefix: str) -> Iterator[Path]:
        path = Path(tempfile.mkdtemp(dir=self.snapshots.scratch, prefix=prefix))
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.rmdir(path)


def _one_line(text: str) -> str:
    """A heredoc RUN's history spans lines; the log shows its first line, as BuildKit does."""
    first, _, rest = text.removesuffix(" # buildkit").partition("\n")
    return f"{first} ..." if rest else first


def _needs_fs(step: MetaStep) -> bool:
    return any(c.op == "workdir" for c in step.changes)


def _make_dirs(root: Path, dirs: list[tuple[str, int, int, int, tuple[int, int] | None]]) -> None:
    """Create ``dirs`` (parents first) under ``root`` with the given mode, owner and times."""
    for rel, mode, uid, gid, _ in dirs:
        path = root / rel
        path.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.lchown(path, uid, gid)
        os.chmod(path, mode)  # after chown, which would clear setgid
    for rel, _, _, _, times in reversed(dirs):
        if times is not None:
            os.utime(root / rel, ns=times, follow_symlinks=False)


def _timestamp(epoch: int | None) -> str:
    when = datetime.fromtimestamp(epoch, UTC) if epoch is not None else datetime.now(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ") if epoch is not None else when.isoformat().replace("+00:00", "Z")
