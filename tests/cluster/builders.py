"""Tiny builder images and BuildConfigs shared by the local strategy tests and the e2e tests."""

from __future__ import annotations

from typing import Any

# A custom builder in busybox sh: writes a one-layer OCI image to $KILN_OUTPUT_LAYOUT (what kiln
# then pushes to OUTPUT_IMAGE) and records the custom-build environment it was given in the image.
CUSTOM_BUILD_SH = r"""#!/bin/sh
set -eu
work=$(mktemp -d)
mkdir -p "$work/root"
{
  echo "OUTPUT_IMAGE=${OUTPUT_IMAGE:-}"
  echo "OUTPUT_REGISTRY=${OUTPUT_REGISTRY:-}"
  echo "SOURCE_URI=${SOURCE_URI:-}"
  echo "SOURCE_REF=${SOURCE_REF:-}"
  echo "PUSH_DOCKERCFG_PATH=${PUSH_DOCKERCFG_PATH:-}"
  echo "GREETING=${GREETING:-}"
  case "$BUILD" in *'"kind":"Build"'*) echo "BUILD=ok" ;; *) echo "BUILD=missing" ;; esac
} > "$work/root/custom-build.env"
cat "$work/root/custom-build.env"
cd "$work/root" && tar -cf ../layer.tar custom-build.env && cd "$work"
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { wc -c < "$1" | tr -d ' '; }
L=$(sha layer.tar); LS=$(size layer.tar)
printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["cat","/custom-build.env"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$L" > config.json
C=$(sha config.json); CS=$(size config.json)
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$C" "$CS" "$L" "$LS" > manifest.json
M=$(sha manifest.json); MS=$(size manifest.json)
out="$KILN_OUTPUT_LAYOUT"
mkdir -p "$out/blobs/sha256"
cp layer.tar "$out/blobs/sha256/$L"; cp config.json "$out/blobs/sha256/$C"; cp manifest.json "$out/blobs/sha256/$M"
printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s}]}' "$M" "$MS" > "$out/index.json"
echo "custom build wrote sha256:$M"
"""


def custom_builder_dockerfile(busybox: str) -> str:
    return f'FROM {busybox}\nCOPY build.sh /usr/local/bin/build.sh\nRUN chmod 755 /usr/local/bin/build.sh\nCMD ["/usr/local/bin/build.sh"]\n'


def docker_inline(name: str, busybox: str, output: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "BuildConfig",
        "metadata": {"name": name},
        "spec": {
            "source": {"dockerfile": f"FROM {busybox}\nARG WHO=nobody\nRUN echo \"hello from $WHO, $GREETING\" > /hello.txt\n"},
            "strategy": {"type": "Docker", "dockerStrategy": {"buildArgs": [{"name": "WHO", "value": "kiln"}], "env": [{"name": "GREETING", "value": "hi"}]}},
            "output": {"to": {"kind": "DockerImage", "name": output}, "imageLabels": [{"name": "built-by", "value": "kiln"}]},
            **extra,
        },
    }


def pipeline(name: str, busybox: str, output: str) -> dict[str, Any]:
    """Two steps share /workspace (one compiles, one tests), then the workspace Dockerfile packages the result."""
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "BuildConfig",
        "metadata": {"name": name},
        "spec": {
            "strategy": {
                "type": "Pipeline",
                "pipelineStrategy": {
                    "steps": [
                        {"name": "compile", "image": busybox, "script": "mkdir -p out && echo \"compiled $STAGE\" > out/app.txt && printf 'FROM %s\\nCOPY out/app.txt /app.txt\\n' \"$BASE\" > Dockerfile",
                         "env": [{"name": "STAGE", "value": "one"}, {"name": "BASE", "value": busybox}]},
                        {"name": "test", "image": busybox, "command": ["grep", "-q", "compiled one", "out/app.txt"]},
                    ]
                },
            },
            "output": {"to": {"kind": "DockerImage", "name": output}},
        },
    }


def custom(name: str, builder: str, output: str) -> dict[str, Any]:
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "BuildConfig",
        "metadata": {"name": name},
        "spec": {
            "source": {"git": {"uri": "https://git.invalid/app.git", "ref": "v1"}},
            "strategy": {"type": "Custom", "customStrategy": {"from": {"kind": "DockerImage", "name": builder}, "env": [{"name": "GREETING", "value": "custom-hi"}]}},
            "output": {"to": {"kind": "DockerImage", "name": output}},
        },
    }


S2I_ASSEMBLE = "#!/bin/sh\nset -e\nmkdir -p /opt/app\ncp -R /tmp/src/. /opt/app/\necho \"assembled with $GREETING\" > /opt/app/assembled\n"
S2I_RUN = "#!/bin/sh\nexec cat /opt/app/assembled\n"


def s2i_builder_dockerfile(busybox: str) -> str:
    return (
        f"FROM {busybox}\nCOPY assemble run /usr/libexec/s2i/\nRUN chmod 755 /usr/libexec/s2i/assemble /usr/libexec/s2i/run\n"
        'LABEL io.openshift.s2i.scripts-url="image:///usr/libexec/s2i"\nENV HOME=/opt/app\nCMD ["/usr/libexec/s2i/run"]\n'
    )


def source(name: str, builder: str, output: str) -> dict[str, Any]:
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "BuildConfig",
        "metadata": {"name": name},
        "spec": {
            "source": {"binary": {}},
            "strategy": {"type": "Source", "sourceStrategy": {"from": {"kind": "DockerImage", "name": builder}, "env": [{"name": "GREETING", "value": "s2i-hi"}]}},
            "output": {"to": {"kind": "DockerImage", "name": output}},
        },
    }
