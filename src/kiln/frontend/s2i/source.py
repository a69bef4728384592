"""Getting the application source into the build context (``upload/src``), as s2i does.

SOURCE is a local directory, a local tarball (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz) or a
git URL (file://, git://, ssh://, http(s)://, user@host:path). Like s2i, a local directory
that is a git repository is *cloned* (only committed content is built) unless ``--copy``
is given; ``--ref`` checks out a branch, tag or commit after the clone. Cloning uses the
``git`` command. ``--context-dir`` picks a subdirectory as the application root.

What is copied into ``upload/src`` leaves out every path the ``--exclude`` regular
expression matches (relative to the application root; s2i's default skips ``.git``), then
the ``.s2iignore`` rules are applied (see ignore.py). File modes and mtimes are kept.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

from kiln.errors import KilnError
from kiln.frontend.s2i.ignore import apply_s2iignore
from kiln.frontend.s2i.labels import SourceInfo

DEFAULT_EXCLUDE = r"(^|/)\.git(/|$)"
TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_GIT_SCHEMES = ("file://", "git://", "ssh://", "http://", "https://", "git+ssh://")
_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:")


class SourceError(KilnError):
    """The application source could not be fetched."""


def kind_of(source: str) -> str:
    """"dir", "git-dir" (a local git repository), "tarball" or "git"."""
    path = Path(source)
    if "://" not in source and path.is_dir():
        return "git-dir" if _is_git_repo(path) else "dir"
    if "://" not in source and path.is_file():
        if source.endswith(TARBALL_SUFFIXES) or tarfile.is_tarfile(source):
            return "tarball"
        raise SourceError(f"source {source}: a file that is not a tarball")
    if source.startswith(_GIT_SCHEMES) or _SCP_LIKE.match(source):
        return "git"
    raise SourceError(f"source {source}: no such directory or tarball, and not a git URL")


def fetch_source(
    source: str,
    dest: Path,
    *,
    ref: str | None = None,
    context_dir: str = "",
    force_copy: bool = False,
    exclude: str = DEFAULT_EXCLUDE,
    scratch: Path | None = None,
) -> SourceInfo:
    """Fill ``dest`` (which must not exist) with the application source; say where it came from."""
    try:
        pattern = re.compile(exclude) if exclude else None
    except re.error as e:
        raise SourceError(f"--exclude {exclude!r}: {e}") from None
    kind = kind_of(source)
    if ref and kind in ("dir", "tarball"):
        raise SourceError(f"--ref {ref}: source {source} is not a git repository")
    with tempfile.TemporaryDirectory(prefix="s2i-source-", dir=scratch) as tmp:
        if kind == "dir" or (kind == "git-dir" and force_copy and not ref):
            root = Path(source).resolve()
            info = _git_info(root, location=str(root)) if kind == "git-dir" else SourceInfo(location=str(root))
        elif kind == "tarball":
            root = Path(tmp) / "tree"
            extract_tarball(Path(source), root)
            info = SourceInfo(location=str(Path(source).resolve()))
        else:
            root = Path(tmp) / "clone"
            url = Path(source).resolve().as_uri() if kind == "git-dir" else source
            _clone(url, root, ref)
            info = _git_info(root, location=url)
        app = root
        if context_dir:
            app = (root / context_dir.strip("/")).resolve()
            if not app.is_relative_to(root.resolve()) or not app.is_dir():
                raise SourceError(f"--context-dir {context_dir}: no such directory in source {source}")
            info = SourceInfo(**{**info.__dict__, "context_dir": context_dir})
        copy_tree(app, dest, pattern)
    apply_s2iignore(dest)
    return info


# -- git ---------------------------------------------------------------------------------------


def _git(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # The repository may belong to another uid (a checkout seen from kiln's user namespace).
    argv = ["git", "-c", "safe.directory=*", "-c", "advice.detachedHead=false", *args]
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env=env, check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SourceError("git is needed to fetch a git source and is not installed") from None


def _clone(url: str, dest: Path, ref: str | None) -> None:
    done = _git("clone", "--quiet", "--recursive", url, str(dest))
    if done.returncode != 0:
        raise SourceError(f"git clone {url} failed: {_last_line(done.stderr)}")
    if ref:
        done = _git("checkout", "--quiet", ref, cwd=dest)
        if done.returncode != 0:
            raise SourceError(f"git checkout {ref} in {url} failed: {_last_line(done.stderr)}")
        _git("submodule", "update", "--init", "--recursive", cwd=dest)


def _is_git_repo(path: Path) -> bool:
    """The top of a git work tree (a stray .git directory is not enough)."""
    if not (path / ".git").exists():
        return False
    done = _git("rev-parse", "--show-toplevel", cwd=path)
    return done.returncode == 0 and Path(done.stdout.strip()).resolve() == path.resolve()


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    return (fatal or lines or ["no output"])[0 if fatal else -1]


def _git_info(repo: Path, *, location: str) -> SourceInfo:
    """s2i's SourceInfo from `git`: origin URL, branch, commit, author, date, subject."""

    def git(*args: str) -> str:
        done = _git(*args, cwd=repo)
        return done.stdout.strip() if done.returncode == 0 else ""

    show = ["--no-pager", "show", "-s"]
    return SourceInfo(
        location=git("config", "--get", "remote.origin.url") or location,
        ref=git("rev-parse", "--abbrev-ref", "HEAD"),
        commit_id=git("rev-parse", "--verify", "HEAD"),
        author_name=git(*show, "--format=%an", "HEAD"),
        author_email=git(*show, "--format=%ae", "HEAD"),
        date=git(*show, "--format=%ad", "HEAD"),
        message=git(*show, "--format=%<(80,trunc)%s", "HEAD"),
    )


# -- copying and unpacking ---------------------------------------------------------------------


def copy_tree(src: Path, dest: Path, exclude: re.Pattern[str] | None) -> None:
    """Copy ``src`` to ``dest`` (symlinks as symlinks, modes and mtimes kept), minus excluded paths."""
    dest.mkdir(parents=True)
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for name in sorted(dirnames):
            rel = os.path.join(rel_dir, name)
            if exclude is not None and exclude.search(rel):
                continue
            full = os.path.join(dirpath, name)
            if os.path.islink(full):  # os.walk lists a symlink to a directory here: copy the link
                os.symlink(os.readlink(full), dest / rel)
                continue
            keep.append(name)
            (dest / rel).mkdir()
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = os.path.join(rel_dir, name)
            if exclude is not None and exclude.search(rel):
                continue
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(full), dest / rel)
            elif stat.S_ISREG(st.st_mode):
                shutil.copy2(full, dest / rel)
            # sockets, fifos and devices are not source code
    for dirpath, _dirnames, _files in os.walk(dest):
        shutil.copystat(src / os.path.relpath(dirpath, dest), dirpath)


def extract_tarball(archive: Path, dest: Path) -> None:
    """Unpack a (compressed) tar safely: no absolute or climbing names, nothing through a
    symlink, no devices; files get the archive's modes (minus setuid/setgid) and mtimes."""
    dest.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _extract_member(tar, member, dest)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise SourceError(f"source {archive}: cannot unpack: {e}") from None


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> None:
    parts = [p for p in member.name.split("/") if p not in ("", ".")]
    if not parts:
        return
    if ".." in parts or member.name.startswith("/"):
        raise SourceError(f"tarball member {member.name!r} would land outside the source directory")
    parent = dest
    for part in parts[:-1]:
        parent = parent / part
        if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
            raise SourceError(f"tarball member {member.name!r} goes through a symlink or a file")
        parent.mkdir(exist_ok=True)
    target = parent / parts[-1]
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()
    mode = member.mode & 0o1777
    if member.isdir():
        target.mkdir(exist_ok=True)
        os.chmod(target, mode | 0o700)
    elif member.issym():
        os.symlink(member.linkname, target)
        return
    elif member.islnk():
        linked = dest.joinpath(*[p for p in member.linkname.split("/") if p not in ("", ".")])
        if ".." in member.linkname.split("/") or linked.is_symlink() or not linked.is_file():
            raise SourceError(f"tarball member {member.name!r}: hard link to {member.linkname!r} outside the tree")
        os.link(linked, target)
        return
    elif member.isreg():
        f = tar.extractfile(member)
        assert f is not None
        with f, open(target, "wb") as out:
            shutil.copyfileobj(f, out)
        os.chmod(target, mode)
    else:
        return  # devices and fifos are not source code
    os.utime(target, (member.mtime, member.mtime))
