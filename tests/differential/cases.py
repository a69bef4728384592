"""The Dockerfiles of the differential test, one small build per case.

Every Dockerfile starts ``FROM {base}``; ``{name}`` placeholders are filled from the session
(``base``, ``registry``, ``url``, ``token``, ``secret``, see conftest.py) — a plain replace, so
the ``${VAR}`` of Dockerfiles needs no escaping.

buildah 1.28 lacks some BuildKit syntax (heredocs, ``--link``, ``--exclude``, ``--parents``,
``--checksum``, ``RUN --network``, symbolic ``--chmod``). For those cases ``buildah_dockerfile``
spells the same build in syntax buildah knows, so the whole trees are still compared, and
``expect`` writes down what the new syntax must produce, checked against kiln's image alone.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.differential.context import Dir, Entry, File, Hardlink, Symlink, tar_bytes


@dataclass(frozen=True)
class Expect:
    """One path of the expected tree (checked for kiln; ``content`` is compared by digest)."""

    type: str = "file"
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    content: bytes | str | None = None
    target: str | None = None
    links: tuple[str, ...] | None = None  # the other names of a hard-linked file (None: not checked)


@dataclass(frozen=True)
class Deviation:
    """A documented difference in one path: buildah 1.28 gives one thing, kiln (following BuildKit)
    another. Both sides are checked, so the deviation cannot silently change or hide other bugs."""

    why: str
    buildah: Expect | None
    kiln: Expect | None


@dataclass(frozen=True)
class ConfigDeviation:
    """The same for one config field (values after normalise.config_view)."""

    why: str
    buildah: Any
    kiln: Any


@dataclass(frozen=True)
class Case:
    name: str
    dockerfile: str
    files: Mapping[str, Entry] = field(default_factory=dict)
    args: tuple[str, ...] = ()  # for both builders
    buildah_dockerfile: str | None = None
    fmt: str = "oci"
    expect: Mapping[str, Expect | None] = field(default_factory=dict)  # None: must not exist
    absent_bytes: tuple[str, ...] = ()  # placeholders allowed; must be in no layer of either image
    deviations: Mapping[str, Deviation] = field(default_factory=dict)
    config_deviations: Mapping[str, ConfigDeviation] = field(default_factory=dict)
    xfail: str | None = None


DIRS_0755 = {"d": Dir(), "d/sub": Dir()}
BIG = random.Random(7).randbytes(1 << 20)

# Deliberate deviations (docs/differential.md): kiln follows BuildKit where buildah 1.28 differs.
SHELL_WHY = "SHELL applies to shell-form CMD and ENTRYPOINT too (Docker, BuildKit); buildah 1.28 uses /bin/sh -c"
SETID_WHY = (
    "COPY from the context keeps setuid/setgid bits (Docker, BuildKit); buildah 1.28 strips them "
    "there (not the sticky bit, and not in COPY --from)"
)
WORKDIR_WHY = (
    "WORKDIR creates its directory, owned by USER (BuildKit); buildah 1.28 creates it only when a "
    "later RUN needs it (then also owned by USER)"
)
LINK_DEST_WHY = (
    "COPY resolves the whole destination path inside the image, a final symlink too, and replaces "
    "the file the link points at (BuildKit: fs.RootPath then ensureEmptyFileTarget); buildah 1.28 "
    "replaces the symlink itself"
)
COPY_UP_WHY = (
    "a RUN that changes one name of a hard link made in an earlier layer breaks the link: overlayfs "
    "copies up that name only (as with Docker's overlay2 and BuildKit's overlayfs snapshotter); "
    "buildah's vfs driver copies the whole tree and keeps the link"
)

CASES: list[Case] = [
    Case(
        "from-arg-platform",
        """\
ARG BASE={base}
ARG UNUSED=nothing
FROM --platform=$BUILDPLATFORM ${BASE} AS build
ARG BUILDPLATFORM
ARG TARGETPLATFORM
ARG TARGETOS
ARG TARGETARCH
RUN echo "$BUILDPLATFORM $TARGETPLATFORM $TARGETOS $TARGETARCH" > /platforms
ARG BASE
RUN echo "base=$BASE unused=$UNUSED" > /global-args
FROM ${BASE}
COPY --from=build /platforms /global-args /
""",
    ),
    Case(
        "multi-stage",
        """\
FROM {base} AS build
WORKDIR /src
COPY main.txt .
RUN mkdir -p /out/bin && cp main.txt /out/app.txt && echo built >> /out/app.txt && ln -s app.txt /out/current
FROM {base} AS other
RUN echo other > /other
FROM {base}
COPY --from=build /out/ /app/
COPY --from=build /src /src-copy
COPY --from=1 /other /other
COPY --from={base} /etc/group /copied-group
COPY --from=build /out/current /resolved-top-level-link
""",
        {"main.txt": "main\n"},
    ),
    Case(
        "target",
        """\
FROM {base} AS base
RUN echo base > /base
FROM base AS middle
RUN echo middle > /middle
ENV STAGE=middle
CMD ["cat", "/middle"]
FROM middle AS broken
RUN exit 3
""",
        args=("--target", "middle"),
    ),
    Case(
        "run-forms",
        """\
FROM {base}
ENV GREETING="hello world"
RUN echo "$GREETING" > /shell-form && echo $0 > /shell-0
RUN ["/bin/sh", "-c", "echo \\"$GREETING\\" exec > /exec-form"]
RUN ["touch", "/exec-no-shell"]
RUN echo one \\
    two \\
  && mkdir -p /deep/er/dir && chmod 0750 /deep/er && umask 077 && echo private > /umask077
RUN set -e; for i in 1 2 3; do echo $i >> /loop; done
""",
    ),
    Case(
        "run-heredoc",
        """\
FROM {base}
RUN <<EOT
set -e
mkdir /hd
echo one > /hd/a
EOT
ENV X=ex
RUN cat <<EOT > /hd/b
two $X
EOT
RUN <<EOT sh -e
echo three > /hd/c
EOT
COPY <<EOT /hd/d
four
EOT
RUN cat <<'EOT' > /hd/e
$X literal
EOT
RUN cat <<-EOT > /hd/f
		tab-stripped
	EOT
""",
        buildah_dockerfile="""\
FROM {base}
RUN set -e; mkdir /hd; echo one > /hd/a
ENV X=ex
RUN echo "two $X" > /hd/b
RUN echo three > /hd/c
RUN echo four > /hd/d
RUN echo '$X literal' > /hd/e
RUN echo tab-stripped > /hd/f
""",
        expect={
            "/hd": Expect("dir", 0o755),
            "/hd/a": Expect(content="one\n"),
            "/hd/b": Expect(content="two ex\n"),
            "/hd/c": Expect(content="three\n"),
            "/hd/d": Expect(content="four\n"),
            "/hd/e": Expect(content="$X literal\n"),
            "/hd/f": Expect(content="tab-stripped\n"),
        },
    ),
    Case(
        "run-mounts",
        """\
FROM {base} AS gen
RUN mkdir /gen && echo generated > /gen/g.txt
FROM {base}
RUN --mount=type=cache,id={token}-c,target=/var/cache/thing echo cached > /var/cache/thing/f && ls /var/cache/thing > /cache-listing
RUN --mount=type=cache,id={token}-c,target=/var/cache/thing cat /var/cache/thing/f > /cache-second
RUN --mount=type=bind,source=data,target=/mnt/ctx cat /mnt/ctx/x.txt > /from-ctx
RUN --mount=type=bind,from=gen,source=/gen,target=/mnt/gen cat /mnt/gen/g.txt > /from-stage
RUN --mount=type=tmpfs,target=/scratch echo t > /scratch/t && ls -a /scratch > /tmpfs-listing
RUN --mount=type=cache,id={token}-u,target=/c2,uid=1000,gid=2000,mode=0710 stat -c '%u:%g %a' /c2 > /cache-owner
RUN --mount=type=bind,source=data,target=/mnt/rw,rw echo changed > /mnt/rw/x.txt && cat /mnt/rw/x.txt > /rw-seen
RUN --mount=target=/whole-context ls -a /whole-context | sort > /context-listing
RUN --mount=type=cache,id={token}-s,target=/c3,sharing=locked touch /c3/locked && test -e /c3/locked && echo ok > /locked-ok
""",
        {"data": Dir(), "data/x.txt": "from the context\n"},
        expect={"/var/cache/thing/f": None, "/scratch/t": None, "/cache-second": Expect(content="cached\n")},
    ),
    Case(
        "run-secret",
        """\
FROM {base}
RUN --mount=type=secret,id=tok cat /run/secrets/tok | sha256sum > /secret-sum
RUN --mount=type=secret,id=tok,target=/etc/tok.txt wc -c < /etc/tok.txt > /secret-len
RUN --mount=type=secret,id=tok,required=true test -s /run/secrets/tok && echo ok > /secret-ok
RUN --mount=type=secret,id=tok,uid=1000,gid=2000,mode=0440 stat -c '%u:%g %a' /run/secrets/tok > /secret-stat
""",
        args=("--secret", "id=tok,src={secret}"),
        expect={"/run/secrets/tok": None, "/etc/tok.txt": None},
        absent_bytes=("{secret_value}",),
    ),
    Case(
        "run-network",
        """\
FROM {base}
RUN --network=none sh -c 'if wget -q -T 3 -O /dev/null {url}/hello.txt; then exit 1; fi; echo isolated > /net'
RUN --network=default wget -q -O /fetched {url}/hello.txt
RUN --network=host wget -q -O /fetched-host {url}/hello.txt
""",
        buildah_dockerfile="""\
FROM {base}
RUN echo isolated > /net
RUN wget -q -O /fetched {url}/hello.txt
RUN wget -q -O /fetched-host {url}/hello.txt
""",
        expect={"/net": Expect(content="isolated\n"), "/fetched": Expect(content="hello over http\n")},
    ),
    Case(
        "cmd-entrypoint-exec",
        """\
FROM {base}
ENTRYPOINT ["/bin/echo", "hi"]
CMD ["there", "you"]
""",
    ),
    Case(
        "cmd-entrypoint-shell",
        """\
FROM {base}
CMD echo "cmd $HOME"
ENTRYPOINT echo entry
""",
    ),
    Case(
        "entrypoint-resets-base-cmd",
        """\
FROM {base}
ENTRYPOINT ["/bin/sh", "-c"]
""",
    ),
    Case(
        "env",
        """\
FROM {base}
ENV A=1 B="two words" C=${A}x
ENV OLD legacy syntax value
ENV PATH=/opt/bin:$PATH D=\\$A E='$A' F="${B:-unset}" G=${NOPE:-dflt} H=${A:+alt}
ENV EMPTY=
RUN echo "$A|$B|$C|$OLD|$D|$E|$F|$G|$H|$EMPTY|$PATH" > /env.txt
""",
    ),
    Case(
        "args",
        """\
ARG GLOBAL=global-default
FROM {base}
ARG X=default
ARG Y
ARG Z=zz
ARG GLOBAL
ARG DEST=/dest
ENV FROMARG=$X-$Z
RUN echo "$X|$Y|$Z|$GLOBAL|$FROMARG" > /args.txt && env | grep -E '^(X|Y|Z|GLOBAL)=' | sort > /args-env.txt
COPY a.txt $DEST/
""",
        {"a.txt": "a\n"},
        args=("--build-arg", "Y=given", "--build-arg", "Z=over", "--build-arg", "GLOBAL=from-cli"),
    ),
    Case(
        "metadata",
        """\
FROM {base}
ARG VERSION=1.2.3
LABEL a=b "c d"="e f" version=$VERSION
LABEL multi.line="one \\
two"
EXPOSE 80 8080/udp 443/tcp
EXPOSE 9000
VOLUME /data ["/logs", "/var/log/app"]
VOLUME /data2 /data3
STOPSIGNAL SIGUSR1
MAINTAINER Jane Doe <jane@example.com>
""",
    ),
    Case(
        "user",
        """\
FROM {base}
RUN mkdir /shared && chmod 1777 /shared
USER app
RUN touch /shared/by-app
USER 1000:2000
RUN touch /shared/by-numeric
USER 4321
RUN touch /shared/by-unknown-uid
USER app:devs
RUN touch /shared/by-app-devs
USER root
RUN touch /by-root
USER app:devs
""",
    ),
    Case(
        "user-groups",
        """\
FROM {base}
RUN mkdir /shared && chmod 1777 /shared
USER app
RUN id > /shared/id-app
USER 1000:2000
RUN id > /shared/id-numeric
USER 4321
RUN id > /shared/id-unknown
""",
    ),
    Case(
        "run-home",
        """\
FROM {base}
RUN echo "root:$HOME" > /home-root
USER app
RUN echo "app:$HOME" > /tmp/home-app
USER 4321
RUN echo "unknown:$HOME" > /tmp/home-unknown
""",
    ),
    Case(
        "workdir",
        """\
FROM {base}
WORKDIR /a/b
WORKDIR c
RUN pwd > /pwd
ENV DIRNAME=named
WORKDIR $DIRNAME
COPY a.txt .
COPY a.txt rel/
WORKDIR /tmp
WORKDIR /
WORKDIR /a/b/c/named
""",
        {"a.txt": "a\n"},
    ),
    Case(
        "workdir-unused",
        """\
FROM {base}
WORKDIR /newtop/deeper
USER app
WORKDIR /appdir
WORKDIR sub
""",
        deviations={
            "/newtop": Deviation(WORKDIR_WHY, None, Expect("dir", 0o755)),
            "/newtop/deeper": Deviation(WORKDIR_WHY, None, Expect("dir", 0o755)),
            "/appdir": Deviation(WORKDIR_WHY, None, Expect("dir", 0o755, 1000, 1000)),
            "/appdir/sub": Deviation(WORKDIR_WHY, None, Expect("dir", 0o755, 1000, 1000)),
        },
    ),
    Case(
        "workdir-existing-parents",
        """\
FROM {base}
WORKDIR /tmp/new
RUN touch /tmp/new/file
USER app
WORKDIR /home/app/work
RUN true
""",
    ),
    Case(
        "workdir-through-symlink",
        """\
FROM {base}
RUN mkdir /opt && ln -s /opt /linkwd && ln -s relative-missing /dangling-wd
WORKDIR /linkwd/sub
RUN touch here
WORKDIR /dangling-wd/x
RUN touch there
""",
    ),
    Case(
        "shell-docker",
        """\
FROM {base}
SHELL ["/bin/sh", "-e", "-x", "-c"]
RUN echo "$0 $-" > /shell-flags
CMD echo shell form cmd
SHELL ["/bin/busybox", "sh", "-c"]
ENTRYPOINT echo shell form entrypoint
RUN echo $0 > /shell-second
""",
        fmt="docker",
        config_deviations={
            "Cmd": ConfigDeviation(
                SHELL_WHY, ["/bin/sh", "-c", "echo shell form cmd"], ["/bin/sh", "-e", "-x", "-c", "echo shell form cmd"]
            ),
            "Entrypoint": ConfigDeviation(
                SHELL_WHY,
                ["/bin/sh", "-c", "echo shell form entrypoint"],
                ["/bin/busybox", "sh", "-c", "echo shell form entrypoint"],
            ),
        },
    ),
    Case(
        "healthcheck-docker",
        """\
FROM {base} AS none
HEALTHCHECK NONE
FROM {base}
HEALTHCHECK --interval=30s --timeout=5s --start-period=2s --retries=4 CMD wget -q -O /dev/null localhost || exit 1
""",
        fmt="docker",
    ),
    Case(
        "healthcheck-none-docker",
        """\
FROM {base}
HEALTHCHECK CMD ["true"]
HEALTHCHECK NONE
""",
        fmt="docker",
    ),
    Case(
        "copy-chown-chmod",
        """\
FROM {base}
COPY --chown=app:devs a.txt /owned/by-name
COPY --chown=1000:2000 d /owned/numeric/
COPY --chown=app a.txt /owned/user-only
COPY --chown=4321:4321 a.txt /owned/unknown-ids
COPY --chmod=0751 a.txt /modes/
COPY --chmod=4755 a.txt /modes/setuid
COPY --chmod=0700 d /modes/dir/
ADD --chown=app:app --chmod=0640 a.txt /modes/added
""",
        {"a.txt": "a\n", **DIRS_0755, "d/x.txt": "x\n", "d/sub/y.txt": File("y\n", 0o600)},
    ),
    Case(
        "copy-chmod-symbolic",
        """\
FROM {base}
COPY --chmod=u+x,g-r a.txt /sym
COPY --chmod=a=rX d/x.txt d/sub/y.sh /symfiles/
""",
        {"a.txt": "a\n", **DIRS_0755, "d/x.txt": File("x\n", 0o644), "d/sub/y.sh": File("y\n", 0o755)},
        buildah_dockerfile="""\
FROM {base}
COPY --chmod=0704 a.txt /sym
COPY --chmod=0444 d/x.txt /symfiles/
COPY --chmod=0555 d/sub/y.sh /symfiles/
""",
        expect={
            "/sym": Expect(mode=0o704, content="a\n"),
            "/symfiles/x.txt": Expect(mode=0o444, content="x\n"),
            "/symfiles/y.sh": Expect(mode=0o555, content="y\n"),
        },
    ),
    Case(
        "copy-link",
        """\
FROM {base}
COPY --link a.txt /linked/
COPY --link --chown=app:devs d /linked/dir/
COPY --link --from={base} /etc/passwd /linked/passwd
RUN echo after >> /linked/a.txt
""",
        {"a.txt": "a\n", **DIRS_0755, "d/x.txt": "x\n"},
        buildah_dockerfile="""\
FROM {base}
COPY a.txt /linked/
COPY --chown=app:devs d /linked/dir/
COPY --from={base} /etc/passwd /linked/passwd
RUN echo after >> /linked/a.txt
""",
        expect={"/linked/a.txt": Expect(content="a\nafter\n"), "/linked/dir/x.txt": Expect(uid=1000, gid=2000, content="x\n")},
    ),
    Case(
        "copy-exclude",
        """\
FROM {base}
COPY --exclude=*.log --exclude=skip src/ /ex/
COPY --exclude=**/*.tmp src /ex2/
""",
        {
            "src": Dir(), "src/keep.txt": "keep\n", "src/drop.log": "log\n", "src/skip": Dir(),
            "src/skip/inner.txt": "inner\n", "src/sub": Dir(), "src/sub/deep.log": "deep log\n",
            "src/sub/k.tmp": "tmp\n",
        },
        buildah_dockerfile="""\
FROM {base}
COPY src/keep.txt /ex/
COPY src/sub /ex/sub/
COPY src/keep.txt src/drop.log /ex2/
COPY src/skip /ex2/skip/
COPY src/sub/deep.log /ex2/sub/
""",
        expect={
            "/ex/keep.txt": Expect(content="keep\n"),
            "/ex/drop.log": None,
            "/ex/skip": None,
            "/ex/sub/deep.log": Expect(content="deep log\n"),  # *.log matches at the top only
            "/ex2/sub/k.tmp": None,
            "/ex2/skip/inner.txt": Expect(content="inner\n"),
        },
    ),
    Case(
        "copy-parents",
        """\
FROM {base}
COPY --parents a/b/c.txt a/d/*.txt /p/
WORKDIR /w
COPY --parents a/./b/c.txt ./
""",
        {"a": Dir(), "a/b": Dir(), "a/d": Dir(), "a/b/c.txt": "c\n", "a/d/x.txt": "x\n", "a/d/y.txt": "y\n", "a/d/z.md": "z\n"},
        buildah_dockerfile="""\
FROM {base}
COPY a/b/c.txt /p/a/b/
COPY a/d/*.txt /p/a/d/
WORKDIR /w
COPY a/b/c.txt /w/b/
""",
        expect={
            "/p/a": Expect("dir", 0o755),
            "/p/a/b/c.txt": Expect(content="c\n"),
            "/p/a/d/x.txt": Expect(content="x\n"),
            "/p/a/d/z.md": None,
            "/w/b/c.txt": Expect(content="c\n"),
            "/w/a": None,
        },
    ),
    Case(
        "copy-paths",
        """\
FROM {base}
COPY *.txt /w/
COPY a.txt /renamed
COPY a.txt /newdir/
COPY d /dir-contents/
COPY d /dir-no-slash
COPY a.txt b.txt /multi/
COPY [ab].txt /class/
COPY ["sp ace.txt", "/json form/"]
COPY a.txt /tmp
COPY d/ /etc/
WORKDIR /wd
COPY a.txt rel/
COPY b.txt .
COPY d/sub/ sub-contents
""",
        {"a.txt": "a\n", "b.txt": "b\n", "c.md": "c\n", "sp ace.txt": "space\n", **DIRS_0755, "d/x": "x\n", "d/sub/y": "y\n"},
    ),
    Case(
        "copy-dir-modes",
        """\
FROM {base}
COPY d700 /top700
COPY d700/ /top700-slash/
COPY parent/ /p/
""",
        {"d700": Dir(0o700), "d700/f": "f\n", "parent": Dir(0o750), "parent/child": Dir(0o711), "parent/child/g": "g\n"},
    ),
    Case(
        "context-special-files",
        """\
FROM {base}
COPY tree/ /t/
COPY tree/link /top-link
COPY tree/dirlink /top-dirlink
""",
        {
            "tree": Dir(), "tree/a.txt": "a\n",
            "tree/link": Symlink("a.txt"),
            "tree/abs": Symlink("/etc/passwd"),
            "tree/dangling": Symlink("nowhere"),
            "tree/sub": Dir(), "tree/sub/s.txt": "s\n",
            "tree/dirlink": Symlink("sub"),
            "tree/h1": "same inode\n", "tree/h2": Hardlink("tree/h1"), "tree/sub/h3": Hardlink("tree/h1"),
            "tree/suid": File("#!/bin/sh\n", 0o4755),
            "tree/sgid": File("g\n", 0o2755),
            "tree/sgid-dir": Dir(0o2775), "tree/sgid-dir/f": "f\n",
            "tree/sticky": Dir(0o1777),
            "tree/private": File("p\n", 0o600),
            "tree/xattr": File("x\n", xattrs={"user.kiln.note": b"kept"}),
        },
        deviations={
            "/t/suid": Deviation(SETID_WHY, Expect(mode=0o755, content="#!/bin/sh\n"), Expect(mode=0o4755, content="#!/bin/sh\n")),
            "/t/sgid": Deviation(SETID_WHY, Expect(mode=0o755, content="g\n"), Expect(mode=0o2755, content="g\n")),
            "/t/sgid-dir": Deviation(SETID_WHY, Expect("dir", 0o775), Expect("dir", 0o2775)),
        },
    ),
    Case(
        "add-archives",
        """\
FROM {base}
ADD plain.tar /plain/
ADD packed.tar.gz /packed
ADD notatar.tar /notatar/
ADD plain.tar packed.tar.gz /both/
ADD packed.tar.gz /etc/
""",
        {
            "plain.tar": tar_bytes({"p/one.txt": "one\n", "run.sh": "#!/bin/sh\n"}, owner=(1000, 1000)),
            "packed.tar.gz": tar_bytes({"z/two.txt": "two\n"}, gzip=True, owner=(4321, 4321)),
            "notatar.tar": "this is not a tar\n",
        },
    ),
    Case(
        "add-url",
        """\
FROM {base}
ADD --checksum=sha256:{sha_hello} {url}/hello.txt /dl/
ADD {url}/archive.tar.gz /dl/
ADD --chmod=0640 --chown=app:app {url}/hello.txt /dl/private.txt
ADD {url}/hello.txt /dl/renamed
""",
        buildah_dockerfile="""\
FROM {base}
ADD {url}/hello.txt /dl/
ADD {url}/archive.tar.gz /dl/
ADD --chmod=0640 --chown=app:app {url}/hello.txt /dl/private.txt
ADD {url}/hello.txt /dl/renamed
""",
        expect={"/dl/hello.txt": Expect(mode=0o600, content="hello over http\n")},
    ),
    Case(
        "dockerignore",
        """\
FROM {base}
COPY . /ctx/
""",
        {
            ".dockerignore": "**/*.log\n!keep.log\nsecret/\n**/tmp\ndocs/**/*.md\n!docs/README.md\n*.bak\n",
            "app.py": "print()\n", "x.log": "x\n", "keep.log": "kept\n", "sub/y.log": "y\n",
            "secret/key": "k\n", "sub/tmp/t": "t\n", "tmp/t2": "t\n",
            "docs/README.md": "readme\n", "docs/guide/intro.md": "intro\n", "docs/guide/pic.png": "png\n",
            "old.bak": "b\n", "sub/old.bak": "kept: *.bak matches at the root only\n",
        },
        expect={"/ctx/x.log": None, "/ctx/keep.log": Expect(content="kept\n"), "/ctx/secret": None},
    ),
    Case(
        "whiteouts",
        """\
FROM {base} AS s
RUN mkdir -p /d/sub && echo 1 > /d/sub/a && echo 2 > /d/b && echo 3 > /gone && ln -s /gone /link-to-gone
RUN rm /gone && rm -r /d && mkdir /d && echo new > /d/c
RUN rm /bin/vi /etc/group && rm -rf /home && mkdir /home && touch /home/x
RUN rm /link-to-gone && mkdir /link-to-gone && mv /d/c /d/moved
RUN rm -r /var && echo file > /var
FROM s
RUN rm /var && mkdir -p /var/again
""",
    ),
    Case(
        "special-files-from-run",
        """\
FROM {base}
RUN echo data > /h1 && ln /h1 /h2 && mkdir /hd && ln /h1 /hd/h3
RUN cp /bin/busybox /suid && chmod 4755 /suid && mkdir /sgid && chmod 2770 /sgid && chmod 1777 /tmp
RUN mkfifo /fifo && chmod 0600 /fifo
RUN touch /owned && chown 1234:5678 /owned
RUN ln -s /nowhere /dangling && ln -s ../etc /rel-link
""",
    ),
]

CASES.append(
    Case(
        "hardlink-changed-later",
        """\
FROM {base}
RUN echo data > /h1 && ln /h1 /h2
RUN echo more >> /h2
""",
        deviations={
            "/h1": Deviation(
                COPY_UP_WHY, Expect(content="data\nmore\n", links=("/h2",)), Expect(content="data\n", links=())
            ),
            "/h2": Deviation(
                COPY_UP_WHY, Expect(content="data\nmore\n", links=("/h1",)), Expect(content="data\nmore\n", links=())
            ),
        },
    )
)

CASES += [
    Case(
        "copy-through-symlinks",
        """\
FROM {base}
RUN mkdir -p /opt/real && ln -s /opt/real /linkdir && ln -s real /opt/rel && echo old > /target && ln -s /target /filelink
COPY a.txt /linkdir/
COPY b.txt /opt/rel/
COPY d /linkdir/d/
COPY a.txt /filelink
COPY b.txt /bin/sh
""",
        {"a.txt": "a\n", "b.txt": "b\n", **DIRS_0755, "d/x": "x\n"},
        deviations={
            "/filelink": Deviation(LINK_DEST_WHY, Expect(content="a\n"), Expect("symlink", 0o777, target="/target")),
            "/target": Deviation(LINK_DEST_WHY, Expect(content="old\n"), Expect(content="a\n")),
            "/bin/sh": Deviation(LINK_DEST_WHY, Expect(content="b\n"), Expect("symlink", 0o777, target="/bin/busybox")),
            "/bin/busybox": Deviation(LINK_DEST_WHY, Expect(mode=0o755), Expect(content="b\n")),
        },
    ),
    Case(
        "add-more-archives",
        """\
FROM {base}
ADD packed.tar.bz2 packed.tar.xz /x/
ADD links.tar /links/
ADD --chown=app:devs owned.tar /owned/
""",
        {
            "packed.tar.bz2": tar_bytes({"bz/one.txt": "bz2\n"}, compression="bz2"),
            "packed.tar.xz": tar_bytes({"xz/two.txt": "xz\n"}, compression="xz"),
            "links.tar": tar_bytes({"l/file": "f\n"}, symlinks={"l/sym": "file"}, hardlinks={"l/hard": "l/file"}),
            "owned.tar": tar_bytes({"o/f.txt": "f\n"}, owner=(1234, 1234)),
        },
    ),
    Case(
        "config-edge",
        """\
FROM {base} AS Parent
ENV PORT=8080 USERNAME=app
EXPOSE $PORT 7000-7002/tcp 53/udp
STOPSIGNAL 9
USER $USERNAME
LABEL "quoted key"="value with \\"quotes\\"" empty="" base=parent
CMD ["parent"]
FROM parent
LABEL base=child
ENTRYPOINT ["/bin/echo"]
""",
        # buildah 1.28 cannot find stage "Parent" as "parent" (BuildKit's stage names ignore case).
        buildah_dockerfile="""\
FROM {base} AS parent
ENV PORT=8080 USERNAME=app
EXPOSE $PORT 7000-7002/tcp 53/udp
STOPSIGNAL 9
USER $USERNAME
LABEL "quoted key"="value with \\"quotes\\"" empty="" base=parent
CMD ["parent"]
FROM parent
LABEL base=child
ENTRYPOINT ["/bin/echo"]
""",
        config_deviations={
            "ExposedPorts": ConfigDeviation(
                "EXPOSE expands a port range into single ports (BuildKit, via nat.ParsePortSpecs); "
                "buildah 1.28 stores the range as one key",
                {"53/udp": {}, "7000-7002/tcp": {}, "8080/tcp": {}},
                {"53/udp": {}, "7000/tcp": {}, "7001/tcp": {}, "7002/tcp": {}, "8080/tcp": {}},
            ),
        },
    ),
    Case(
        "arg-scope",
        """\
ARG G=global
FROM {base} AS one
ARG S1=s1
RUN echo "one:$G:$S1" > /one
FROM one
RUN echo "two:$G:$S1:$UNDECLARED" > /two
ARG G
ARG S1
RUN echo "three:$G:$S1" > /three
""",
        args=("--build-arg", "UNDECLARED=x", "--build-arg", "S1=cli"),
        deviations={
            "/two": Deviation(
                "a stage built FROM another inherits the ARGs that stage declared (BuildKit; buildah "
                "1.28 does not, buildah issue 5762)",
                Expect(content="two:::\n"), Expect(content="two::cli:\n"),
            ),
        },
    ),
]

CASES += [
    Case(
        "names-and-sizes",
        """\
FROM {base}
COPY . /n/
RUN mkdir -p /r/$(printf 'a%.0s' $(seq 1 120)) && ln -s $(printf 'b%.0s' $(seq 1 150)) /r/long-target \
 && touch "/r/$(printf 'c%.0s' $(seq 1 99))" "/r/$(printf 'd%.0s' $(seq 1 100))" "/r/$(printf 'e%.0s' $(seq 1 101))"
""",
        {
            "long/" + "n" * 150 + ".txt": "long name\n",
            "deep/" + "/".join(f"d{i:02d}-" + "x" * 20 for i in range(10)) + "/f": "deep\n",
            "unicode/\u00e9\u65e5\u672c.txt": "utf-8 name\n",
            "odd/with space #hash \\back.txt": "odd\n",
            "empty-file": "",
            "empty-dir": Dir(),
            "locked/secret": File("unreadable to others\n", 0o000),
            "locked-dir": Dir(0o000), "locked-dir/inside": "inside a 000 directory\n",
            "big.bin": BIG,
            "longlink": Symlink("t" * 200),
        },
    ),
    Case(
        "copy-from-stage-special",
        """\
FROM {base} AS build
RUN mkdir -p /out/sub && echo data > /out/h1 && ln /out/h1 /out/sub/h2 && cp /bin/busybox /out/tool \
 && chmod 4755 /out/tool && chmod 2770 /out/sub && chown 1000:2000 /out/sub && ln -s ../h1 /out/sub/rel
FROM {base}
COPY --from=build /out /copied
COPY --from=build --chown=app:devs /out/sub /owned-sub
COPY --from=build /out/sub/rel /followed
""",
    ),
]

#: The ONBUILD pair is a test of its own (the parent is pushed, then used as a base).
ONBUILD_PARENT = """\
FROM {base}
ONBUILD ARG FROM_CHILD=child-default
ONBUILD COPY trigger.txt /triggered/
ONBUILD RUN echo "ran in child: $FROM_CHILD" > /triggered/ran
ONBUILD ENV TRIGGERED=yes
RUN echo parent > /parent
"""
ONBUILD_CHILD = """\
FROM {parent}
RUN echo child > /child
"""
ONBUILD_FILES: Mapping[str, Entry] = {"trigger.txt": "trigger\n"}
