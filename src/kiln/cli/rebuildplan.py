"""`kiln rebuild-plan IMAGE`: what a new digest of IMAGE would rebuild and redeploy, without doing any of it."""

from __future__ import annotations

import json

import click


@click.command("rebuild-plan")
@click.option("-n", "--namespace", default=None, help="Only this namespace (default: all namespaces).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@click.argument("image")
def rebuild_plan(namespace: str | None, output: str, image: str) -> None:
    """Print the BuildConfigs a new digest of IMAGE would rebuild (cascading through chains, upstream
    first) and the workloads (kiln.dev/triggers) it would then redeploy. Paused triggers are shown
    as skipped."""
    from kiln.cluster.kube import Kube
    from kiln.cluster.redeploy import workloads_using
    from kiln.cluster.triggers.rebuildplan import plan, redeploys

    kube = Kube()
    result = plan(image, kube.list_configs(namespace))
    uses = {img: workloads_using(kube.api, img, namespace) for img in result.images}
    deploys = redeploys(result, uses)
    if output == "json":
        click.echo(json.dumps({
            "image": result.image,
            "rebuild": [{"namespace": r.namespace, "name": r.name, "because": r.because, "after": list(r.after), "output": r.output} for r in result.rebuilds],
            "redeploy": [{"image": img, "kind": u.kind, "namespace": u.namespace, "name": u.name, "container": u.container, "paused": u.paused}
                         for img, u in deploys],
        }, indent=2))  # fmt: skip
        return
    if not result.rebuilds and not deploys:
        click.echo(f"A new digest of {result.image} would rebuild and redeploy nothing.")
        return
    click.echo(f"A new digest of {result.image} would:")
    for r in result.rebuilds:
        why = f"after {', '.join(r.after)}" if r.after else f"watches {r.because}"
        click.echo(f"  rebuild   buildconfig {r.namespace}/{r.name}  ({why}" + (f"; pushes {r.output})" if r.output else ")"))
    for img, u in deploys:
        verb = "skip     " if u.paused else "redeploy "
        click.echo(f"  {verb} {u.kind} {u.namespace}/{u.name} container {u.container}  (follows {img}" + (", paused)" if u.paused else ")"))
