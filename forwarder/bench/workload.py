"""What the benchmarks send: IP numbering and request bodies, shared by every process.

Pure functions and a small cache. IPs are numbered inside 10.0.0.0/8 (16.7 M addresses)
so each load process and each floor can take a disjoint range and every signal of a run
is a new (provider, IP) unless a scenario asks for repeats (``modulo``). Bodies are made
by one C-level ``bytes %`` per request from a per-size template, so the load generator
spends its CPU on the wire, not on building JSON.
"""

from __future__ import annotations

__all__ = ["IP_SPACE", "MESSAGE", "RISKS", "BodyMaker", "ip"]

#: Addresses available to :func:`ip`.
IP_SPACE = 1 << 24
#: Risk levels cycled through by load bodies (HIGH is left to the HIGH-latency scenario).
RISKS = ("LOW", "MEDIUM")
#: The message of every benchmark signal (already within Okta's pattern).
MESSAGE = "credential stuffing"
_CHUNK = 1 << 16


def ip(n: int) -> str:
    """The ``n``-th benchmark address (10.0.0.0/8, wrapping at :data:`IP_SPACE`)."""
    n %= IP_SPACE
    return f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}"


class BodyMaker:
    """JSON-array bodies of ``size`` signals; body ``k`` holds IPs ``first + k*size ...``.

    With ``modulo`` (a multiple of ``size``) the IP numbers repeat every ``modulo``
    signals, which is how the coalescing scenario sends many signals for few IPs.
    """

    def __init__(
        self,
        size: int,
        *,
        first: int = 0,
        modulo: int = 0,
        risks: tuple[str, ...] = RISKS,
        provider: str | None = None,
    ) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        if modulo and modulo % size:
            raise ValueError("modulo must be a multiple of size")
        self.size = size
        self.first = first
        self.modulo = modulo
        target = b',"provider":"%s"' % provider.encode() if provider else b""
        items = [
            b'{"ip":"%%s","riskLevel":"%s","message":"%s"%s}'
            % (risks[i % len(risks)].encode(), MESSAGE.encode(), target)
            for i in range(size)
        ]
        self._template = b"[" + b",".join(items) + b"]"
        self._chunks: dict[int, list[bytes]] = {}
        self._suffixes: list[bytes] = []

    def _chunk(self, index: int) -> list[bytes]:
        chunk = self._chunks.get(index)
        if chunk is None:
            if len(self._chunks) > 4:
                self._chunks.pop(next(iter(self._chunks)))
            if not self._suffixes:
                self._suffixes = [b"%d.%d" % divmod(i, 256) for i in range(_CHUNK)]
            prefix = b"10.%d." % index
            chunk = [prefix + suffix for suffix in self._suffixes]
            self._chunks[index] = chunk
        return chunk

    def numbers(self, k: int) -> range:
        """IP numbers of body ``k``."""
        offset = k * self.size
        if self.modulo:
            offset %= self.modulo
        start = self.first + offset
        return range(start, start + self.size)

    def ips(self, k: int) -> list[str]:
        """IPs of body ``k`` (for checking what was delivered)."""
        return [ip(n) for n in self.numbers(k)]

    def body(self, k: int) -> bytes:
        """Body ``k`` as bytes."""
        span = self.numbers(k)
        start = span.start % IP_SPACE
        index, at = divmod(start, _CHUNK)
        parts = self._chunk(index)[at : at + self.size]
        while len(parts) < self.size:
            index = (index + 1) % (IP_SPACE // _CHUNK)
            parts += self._chunk(index)[: self.size - len(parts)]
        return self._template % tuple(parts)
