"""The previous image of an incremental build, found as ``--incremental-pull-policy`` says.

- ``never``: only the local store;
- ``if-not-present`` (s2i's default): the store, else pulled from its registry;
- ``always``: pulled from its registry.

An image that is not there (or cannot be pulled) is not an error: s2i performs a clean build
then, and so does kiln, with a note saying why.
"""

from __future__ import annotations

import contextlib

from kiln.errors import ImageNotFoundError, KilnError
from kiln.frontend.s2i.config import PullPolicy
from kiln.frontend.s2i.prepare import PreviousFinder
from kiln.oci.models import Platform
from kiln.oci.store import Store
from kiln.registry.options import RegistryOptions


def previous_finder(store: Store, policy: PullPolicy, registry: RegistryOptions, platform: Platform | None = None) -> PreviousFinder:
    def find(ref: str) -> tuple[str | None, str]:
        from kiln.registry.reference import Reference
        from kiln.registry.transfer import pull

        name = str(Reference.parse(ref))
        local = False
        with contextlib.suppress(ImageNotFoundError):
            store.resolve(name)
            local = True
        if local and policy != "always":
            return name, f"s2i: incremental build: save-artifacts of the previous image {name} (local store)"
        if policy == "never":
            return None, f"s2i: no previous image {name} in the store (--incremental-pull-policy never): clean build"
        try:
            pull(Reference.parse(ref), store, platform=platform or Platform(), options=registry)
        except KilnError as e:
            return None, f"s2i: previous image {name} could not be pulled ({e.message}): clean build"
        return name, f"s2i: incremental build: save-artifacts of the previous image {name} (pulled)"

    return find
