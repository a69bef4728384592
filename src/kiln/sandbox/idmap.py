"""uid/gid maps: /etc/subuid parsing, /proc/<pid>/uid_map parsing, and the mapping kiln asks for.

Pure functions over text, plus two thin readers of /proc. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

# The kernel's identity map of the initial user namespace.
_INITIAL_COUNT = 4294967295
# Enough ids for chown, useradd and package managers (the range container images assume).
FULL_RANGE = 65536


@dataclass(frozen=True)
class IdRange:
    """One line of a uid_map/gid_map: ``count`` ids from ``inside`` map to ``outside`` onwards."""

    inside: int
    outside: int
    count: int

    def line(self) -> str:
        return f"{self.inside} {self.outside} {self.count}"


@dataclass(frozen=True)
class SubIdRange:
    """One /etc/subuid or /etc/subgid entry granted to a user."""

    start: int
    count: int


@dataclass(frozen=True)
class Mapping:
    """The uid and gid maps of a user namespace, as seen from inside it."""

    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]
    setgroups_allowed: bool = True

    @property
    def is_initial(self) -> bool:
        """True in the host's initial user namespace (no namespace at all, for practical purposes)."""
        return self.uids == (IdRange(0, 0, _INITIAL_COUNT),)

    @property
    def size(self) -> int:
        """How many consecutive ids from 0 are mapped for both uids and gids."""
        return min(_contiguous_from_zero(self.uids), _contiguous_from_zero(self.gids))

    @property
    def is_full(self) -> bool:
        """True if ids 0..65535 are all usable (chown, useradd and package managers work)."""
        return self.size >= FULL_RANGE

    def maps_uid(self, uid: int) -> bool:
        return any(r.inside <= uid < r.inside + r.count for r in self.uids)

    def maps_gid(self, gid: int) -> bool:
        return any(r.inside <= gid < r.inside + r.count for r in self.gids)

    def describe(self) -> str:
        if self.is_initial:
            return "initial user namespace"
        return "uids " + ", ".join(r.line() for r in self.uids) + "; gids " + ", ".join(r.line() for r in self.gids)


def _contiguous_from_zero(ranges: tuple[IdRange, ...]) -> int:
    covered = 0
    for r in sorted(ranges, key=lambda r: r.inside):
        if r.inside > covered:
            break
        covered = max(covered, r.inside + r.count)
    return covered


def parse_id_map(text: str) -> tuple[IdRange, ...]:
    """Parse the content of /proc/<pid>/uid_map or gid_map."""
    ranges = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 3:
            ranges.append(IdRange(int(fields[0]), int(fields[1]), int(fields[2])))
    return tuple(ranges)


def parse_subid(text: str, user: str, uid: int) -> list[SubIdRange]:
    """The entries of an /etc/subuid-style file that belong to ``user`` (by name or numeric id)."""
    ranges = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) != 3 or fields[0] not in (user, str(uid)):
            continue
        try:
            start, count = int(fields[1]), int(fields[2])
        except ValueError:
            continue
        if count > 0:
            ranges.append(SubIdRange(start, count))
    return ranges


def rootless_ranges(own_id: int, subids: list[SubIdRange]) -> tuple[IdRange, ...]:
    """0 -> the caller's own id, then 1.. -> the subordinate ranges, in file order."""
    ranges = [IdRange(0, own_id, 1)]
    inside = 1
    for sub in subids:
        ranges.append(IdRange(inside, sub.start, sub.count))
        inside += sub.count
    return tuple(ranges)


def identity_ranges(current: tuple[IdRange, ...]) -> tuple[IdRange, ...]:
    """Map every id usable here to itself (a nested namespace created by a privileged uid 0)."""
    return tuple(IdRange(r.inside, r.inside, r.count) for r in current)


def newidmap_args(ranges: tuple[IdRange, ...]) -> list[str]:
    """The triplets newuidmap/newgidmap take after the pid."""
    args: list[str] = []
    for r in ranges:
        args += [str(r.inside), str(r.outside), str(r.count)]
    return args


def map_text(ranges: tuple[IdRange, ...]) -> str:
    """The text written to /proc/<pid>/uid_map (one write, all lines)."""
    return "".join(r.line() + "\n" for r in ranges)


def read_mapping(pid: str = "self") -> Mapping:
    """The maps of the user namespace of process ``pid`` (default: this process)."""
    with open(f"/proc/{pid}/uid_map") as f:
        uids = parse_id_map(f.read())
    with open(f"/proc/{pid}/gid_map") as f:
        gids = parse_id_map(f.read())
    try:
        with open(f"/proc/{pid}/setgroups") as f:
            allowed = f.read().strip() == "allow"
    except OSError:
        allowed = True
    return Mapping(uids, gids, allowed)
