"""Instructions that only edit the image config: each becomes one MetaStep.

Variables are expanded (with the stage's ENV and declared ARGs, as they stand before the
instruction) exactly where BuildKit expands them: ENV and LABEL keys and values, EXPOSE,
VOLUME, USER, WORKDIR and STOPSIGNAL. CMD, ENTRYPOINT, HEALTHCHECK, SHELL, MAINTAINER and
ONBUILD keep their text; the shell expands command lines when the container runs.

`created_by` is the string BuildKit commits to the history for the instruction.
"""

from __future__ import annotations

import ipaddress
import re

from kiln.build.plan import ConfigChange, MetaStep
from kiln.frontend.dockerfile.compile_state import Context, StageState, join_workdir
from kiln.frontend.dockerfile.history import go_list, go_quoted_list, healthcheck_created_by
from kiln.frontend.dockerfile.instructions import (
    ArgInstruction,
    CmdInstruction,
    EntrypointInstruction,
    EnvInstruction,
    ExposeInstruction,
    HealthcheckInstruction,
    Instruction,
    LabelInstruction,
    MaintainerInstruction,
    OnbuildInstruction,
    ShellInstruction,
    StopsignalInstruction,
    UserInstruction,
    VolumeInstruction,
    WorkdirInstruction,
)
from kiln.frontend.dockerfile.parser import LineError
from kiln.frontend.dockerfile.stages import PROXY_ARGS

# moby/sys/signal's Linux names (without the SIG prefix)
_SIGNALS = frozenset(
    [
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT", "KILL", "PIPE",
        "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM", "TRAP", "TSTP", "TTIN", "TTOU",
        "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ", "RTMIN", "RTMAX",
        *(f"RTMIN+{i}" for i in range(1, 16)),
        *(f"RTMAX-{i}" for i in range(1, 15)),
    ]
)  # fmt: skip


def compile_meta(ctx: Context, state: StageState, ins: Instruction) -> MetaStep | None:
    """The MetaStep for a config-only instruction (updating `state`), or None for others."""
    env = state.scope.env
    changes: list[ConfigChange] = []
    if isinstance(ins, ArgInstruction):
        return _arg(ctx, state, ins)
    if isinstance(ins, EnvInstruction):
        pairs = [(ctx.expand(p.key, env), ctx.expand(p.value, env)) for p in ins.pairs]
        state.scope = state.scope.apply(
            ins, global_args=ctx.global_args, build_args=ctx.build_args, escape=ctx.escape
        )
        changes = [ConfigChange("env", [k, v]) for k, v in pairs]
        created_by = "ENV " + " ".join(f"{k}={v}" for k, v in pairs)
    elif isinstance(ins, LabelInstruction):
        pairs = [(ctx.expand(p.key, env), ctx.expand(p.value, env)) for p in ins.pairs]
        changes = [ConfigChange("label", [k, v]) for k, v in pairs]
        created_by = "LABEL " + " ".join(f"{k}={v}" for k, v in pairs)
    elif isinstance(ins, ExposeInstruction):
        words = [w for p in ins.ports for w in ctx.expand_words(p, env)]
        ports = [port for w in words for port in parse_port_spec(w)]
        changes = [ConfigChange("expose", p) for p in ports]
        created_by = "EXPOSE " + go_list(ports)
    elif isinstance(ins, VolumeInstruction):
        paths = [ctx.expand(p, env) for p in ins.paths]
        if "" in paths:
            raise LineError("VOLUME specified can not be an empty string")
        changes = [ConfigChange("volume", p) for p in paths]
        created_by = "VOLUME " + go_list(paths)
    elif isinstance(ins, UserInstruction):
        state.user = ctx.expand(ins.user, env)
        changes = [ConfigChange("user", state.user)]
        created_by = f"USER {state.user}"
    elif isinstance(ins, WorkdirInstruction):
        path = ctx.expand(ins.path, env)
        if not path:
            raise LineError("normalizing workdir: cannot normalize nothing")
        state.workdir = join_workdir(state.workdir, path)
        changes = [ConfigChange("workdir", state.workdir)]
        created_by = f"WORKDIR {state.workdir}"
    elif isinstance(ins, ShellInstruction):
        state.shell = ins.shell
        changes = [ConfigChange("shell", list(ins.shell))]
        created_by = "SHELL " + go_list(ins.shell)
    elif isinstance(ins, StopsignalInstruction):
        signal = ctx.expand(ins.signal, env)
        check_signal(signal)
        changes = [ConfigChange("stopsignal", signal)]
        created_by = f"STOPSIGNAL {signal}"
    elif isinstance(ins, MaintainerInstruction):
        changes = [ConfigChange("maintainer", ins.maintainer)]
        created_by = f"MAINTAINER {ins.maintainer}"
    elif isinstance(ins, HealthcheckInstruction):
        changes = [ConfigChange("healthcheck", _health(ins))]
        created_by = healthcheck_created_by(
            ins.test, ins.interval, ins.timeout, ins.start_period, ins.start_interval, ins.retries
        )
    elif isinstance(ins, CmdInstruction):
        state.cmd = command_argv(ins, state)
        # BuildKit marks every CMD ArgsEscaped (only Windows runtimes read it)
        changes = [ConfigChange("cmd", state.cmd), ConfigChange("args_escaped", True)]
        created_by = "CMD " + go_quoted_list(state.cmd)
    elif isinstance(ins, EntrypointInstruction):
        argv = command_argv(ins, state)
        changes = [ConfigChange("entrypoint", argv)]
        if state.cmd is not None:
            # the entrypoint op resets CMD (right for an inherited one); a CMD set earlier in
            # this stage survives in BuildKit, so it is set again
            changes.append(ConfigChange("cmd", list(state.cmd)))
        created_by = "ENTRYPOINT " + go_quoted_list(argv)
    elif isinstance(ins, OnbuildInstruction):
        state.on_build.append(ins.expression)
        changes = [ConfigChange("onbuild", ins.expression)]
        created_by = f"ONBUILD {ins.expression}"
    else:
        return None
    return MetaStep(tuple(changes), created_by=created_by, line=ins.line)


def command_argv(ins: CmdInstruction | EntrypointInstruction, state: StageState) -> list[str]:
    """Exec form as written; shell form wrapped in the current SHELL."""
    if ins.prepend_shell:
        return [*state.shell_argv, " ".join(ins.command)]
    return list(ins.command)


def _arg(ctx: Context, state: StageState, ins: ArgInstruction) -> MetaStep:
    scope = state.scope.apply(ins, global_args=ctx.global_args, build_args=ctx.build_args, escape=ctx.escape)
    words = []
    for arg in ins.args:
        has_value = arg.key in ctx.build_args or arg.default is not None or arg.key in ctx.global_args
        value = scope.args.get(arg.key) if has_value else None
        state.declared_args.append((arg.key, value))
        # BuildKit records the value; a proxy URL may hold credentials, so only its name is kept
        words.append(arg.key if value is None or arg.key in PROXY_ARGS else f"{arg.key}={value}")
    state.scope = scope
    return MetaStep((), created_by="ARG " + " ".join(words), line=ins.line)


def _health(ins: HealthcheckInstruction) -> dict[str, object] | None:
    if ins.test == ("NONE",):
        return None
    value: dict[str, object] = {"Test": list(ins.test)}
    for key, nanos in (
        ("Interval", ins.interval), ("Timeout", ins.timeout), ("StartPeriod", ins.start_period),
        ("StartInterval", ins.start_interval), ("Retries", ins.retries),
    ):  # fmt: skip
        if nanos:  # zero means "not set" and Docker omits it
            value[key] = nanos
    return value


def check_signal(signal: str) -> None:
    """moby/sys/signal.ParseSignal: a non-zero number or a known name, with or without SIG."""
    if re.fullmatch(r"[+-]?[0-9]+", signal):
        if int(signal) != 0:
            return
    elif signal.upper().removeprefix("SIG") in _SIGNALS:
        return
    raise LineError(f"Invalid signal: {signal}")


# ---------------------------------------------------------------------------- EXPOSE


def parse_port_spec(raw: str) -> list[str]:
    """BuildKit's parsePortSpec: `[ip:][hostport:]port[-end][/proto]` to `port/proto` entries
    (a range gives one entry per port; the protocol defaults to tcp).

    >>> parse_port_spec("8000-8002/udp"), parse_port_spec("127.0.0.1:80:8080")
    (['8000/udp', '8001/udp', '8002/udp'], ['8080/tcp'])
    """
    parts = raw.split(":")
    ip, host_port, container = ":".join(parts[:-2]), (parts[-2] if len(parts) > 1 else ""), parts[-1]
    container, _, proto = container.partition("/")
    if not container:
        raise LineError(f"no port specified: {raw}<empty>")
    proto = proto.lower() or "tcp"
    if proto not in ("tcp", "udp", "sctp"):
        raise LineError(f"invalid proto: {proto}")
    if ip.startswith("[") and ip.endswith("]"):
        ip = ip[1:-1]
    if ip:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise LineError(f"invalid IP address: {ip}") from None
    try:
        start, end = _port_range(container)
    except ValueError:
        raise LineError(f"invalid containerPort: {container}") from None
    if host_port:
        try:
            host_start, host_end = _port_range(host_port)
        except ValueError:
            raise LineError(f"invalid hostPort: {host_port}") from None
        if end - start != host_end - host_start and end != start:
            raise LineError(
                f"invalid ranges specified for container and host Ports: {container} and {host_port}"
            )
    return [f"{port}/{proto}" for port in range(start, end + 1)]


def _port_range(text: str) -> tuple[int, int]:
    pieces = text.split("-") if "-" in text else [text, text]
    if len(pieces) != 2:
        raise ValueError(text)
    start, end = (_port(p) for p in pieces)
    if end < start:
        raise ValueError(text)
    return start, end


def _port(text: str) -> int:
    # Go's strconv.ParseUint(text, 10, 16)
    if not text.isascii() or not text.isdigit() or int(text) > 0xFFFF:
        raise ValueError(text)
    return int(text)
