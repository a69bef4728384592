"""Threads sharing lightkube's decoders from the first decode on (a restarted controller's case).

msgspec builds a type's decoding tables on its first use, and two threads doing that at once
crash the process with SIGSEGV (msgspec 0.22.0 here: 16 threads decoding one Pod list in a fresh
process crashed it every time). kiln.cluster.kube warms every type it decodes when a Kube or a
Redeployer is made; this runs the same race after that, in a fresh process, for each type.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

RACE = textwrap.dedent(
    """
    import json, threading
    from lightkube import Client, KubeConfig
    from lightkube.core import decoders
    from lightkube.resources.apps_v1 import DaemonSet, Deployment, ReplicaSet, StatefulSet
    from lightkube.resources.batch_v1 import CronJob
    from lightkube.resources.core_v1 import Event, Pod, Secret
    from kiln.cluster.kube import BuildConfigResource, BuildResource, Kube
    from kiln.cluster.redeploy import Redeployer

    config = {"apiVersion": "v1", "kind": "Config", "current-context": "c", "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
              "users": [{"name": "u", "user": {"token": "t"}}], "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}
    client = Client(KubeConfig.from_dict(config))  # never contacted
    Kube(client)
    Redeployer(client)
    container = {"name": "c", "image": "i", "env": [{"name": "A", "value": "1"}], "volumeMounts": [{"name": "v", "mountPath": "/m"}]}
    template = {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [container], "volumes": [{"name": "v", "emptyDir": {}}]}}
    meta = {"name": "x", "namespace": "n", "labels": {"a": "b"}, "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "x", "uid": "u"}]}
    items = {
        Pod: {"metadata": meta, **template, "status": {"phase": "Running", "containerStatuses": [{"name": "c", "ready": True, "restartCount": 0,
              "image": "i", "imageID": "x", "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": "m"}}}]}},
        Deployment: {"metadata": meta, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": template}},
        StatefulSet: {"metadata": meta, "spec": {"selector": {"matchLabels": {"a": "b"}}, "serviceName": "s", "template": template}},
        DaemonSet: {"metadata": meta, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": template}},
        ReplicaSet: {"metadata": meta, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": template}},
        CronJob: {"metadata": meta, "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": template}}}},
        Secret: {"metadata": meta, "data": {"k": "dg=="}},
        Event: {"metadata": meta, "involvedObject": {"kind": "Build", "name": "b"}, "reason": "R", "message": "m"},
        BuildResource: {"metadata": meta, "spec": {}, "status": {"phase": "New"}},
        BuildConfigResource: {"metadata": meta, "spec": {}},
    }
    for res, item in items.items():
        data = json.dumps({"metadata": {"resourceVersion": "1"}, "items": [item] * 20}).encode()
        start = threading.Barrier(16)

        def decode(data=data, res=res, start=start):
            start.wait()
            for _ in range(3):
                decoders.decode_list(data, res)

        threads = [threading.Thread(target=decode) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print("all decoded")
    """
)


def test_threads_decoding_every_warmed_type_at_once_do_not_crash() -> None:
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-c", RACE], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "all decoded"), done.stderr[-3000:]
