"""Linux capabilities: names, the default set a build step keeps, and reading our own sets.

Standard library only (runs in the ``python -I -S`` sandbox helper).
"""

from __future__ import annotations

from . import libc

CAP_NUMBERS: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}

# What a build step as uid 0 keeps: the usual container-engine default set minus CAP_MKNOD, because
# kiln has no device cgroup to stop a real-root build step from creating a node for a host disk.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
)


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return max(CAP_NUMBERS.values())


def unknown_capabilities(names: tuple[str, ...] | list[str]) -> list[str]:
    return [n for n in names if n not in CAP_NUMBERS]


def limit_bounding_set(keep: tuple[str, ...] | list[str]) -> None:
    """Drop every capability not in ``keep`` from the bounding set.

    After execve, root's permitted set is the bounding set, and a non-root process cannot gain
    more through file capabilities, so this one step bounds the whole build step.
    """
    keep_numbers = {CAP_NUMBERS[n] for n in keep}
    for cap in range(last_cap() + 1):
        if cap not in keep_numbers:
            libc.prctl(libc.PR_CAPBSET_DROP, cap)


def effective_capabilities(status_text: str | None = None) -> int:
    """The CapEff mask of this process (from /proc/self/status)."""
    if status_text is None:
        with open("/proc/self/status") as f:
            status_text = f.read()
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def has_capability(name: str, status_text: str | None = None) -> bool:
    return bool(effective_capabilities(status_text) >> CAP_NUMBERS[name] & 1)
