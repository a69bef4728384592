"""BuildKit's image history strings (`created_by`), which it writes with Go's fmt verbs.

`docker history` shows these, and tools compare them, so they follow dockerfile2llb's
`commitToHistory` calls character for character: `%v` of a []string is `[a b]`, `%q` is
`["a" "b"]`, durations print as Go's `time.Duration.String()`.

    >>> go_quoted_list(["/bin/sh", "-c", 'echo "hi"'])
    '["/bin/sh" "-c" "echo \\\\"hi\\\\""]'
    >>> go_duration(90 * 10**9), go_duration(1_500_000), go_duration(0)
    ('1m30s', '1.5ms', '0s')
    >>> run_created_by(["/bin/sh", "-c", "make"], {"V": "1"})
    'RUN |1 V=1 /bin/sh -c make # buildkit'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from kiln.frontend.dockerfile.dump import go_quote

_SECOND = 10**9


def go_list(items: Iterable[str]) -> str:
    """fmt's `%v` of a []string."""
    return "[" + " ".join(items) + "]"


def go_quoted_list(items: Iterable[str]) -> str:
    """fmt's `%q` of a []string."""
    return "[" + " ".join(go_quote(i) for i in items) + "]"


def _frac(value: int, digits: int) -> str:
    whole, frac = divmod(value, 10**digits)
    decimals = f"{frac:0{digits}d}".rstrip("0")
    return f"{whole}.{decimals}" if decimals else str(whole)


def go_duration(nanos: int) -> str:
    """Go's `time.Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`."""
    if nanos == 0:
        return "0s"
    u = abs(nanos)
    if u < 1000:
        text = f"{u}ns"
    elif u < 10**6:
        text = _frac(u, 3) + "µs"
    elif u < _SECOND:
        text = _frac(u, 6) + "ms"
    else:
        text = _frac(u % (60 * _SECOND), 9) + "s"
        minutes = u // (60 * _SECOND)
        if minutes:
            text = f"{minutes % 60}m{text}"
            if minutes >= 60:
                text = f"{minutes // 60}h{text}"
    return "-" + text if nanos < 0 else text


def healthcheck_created_by(
    test: Sequence[str], interval: int, timeout: int, start_period: int, start_interval: int, retries: int
) -> str:
    """`HEALTHCHECK %+v` of BuildKit's HealthcheckConfig struct."""
    return (
        f"HEALTHCHECK {{Test:{go_list(test)} Interval:{go_duration(interval)} Timeout:{go_duration(timeout)} "
        f"StartPeriod:{go_duration(start_period)} StartInterval:{go_duration(start_interval)} Retries:{retries}}}"
    )


def run_created_by(argv: Sequence[str], build_args: Mapping[str, str]) -> str:
    """BuildKit's `RUN [|N K=V ...] argv # buildkit`: the build args in scope, then the command."""
    prefix = [f"|{len(build_args)}", *(f"{k}={v}" for k, v in build_args.items())] if build_args else []
    return "RUN " + " ".join([*prefix, *argv]) + " # buildkit"
