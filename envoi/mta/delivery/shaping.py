"""Per-destination shaping rules (connections, messages per connection, rate) from a TOML file."""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

DEFAULT_FILE = Path(__file__).with_name("shaping.toml")
_FIELDS = ("max_connections", "messages_per_connection", "messages_per_minute", "pause_seconds")


@dataclass(frozen=True)
class Rule:
    name: str = "default"
    max_connections: int = 10
    messages_per_connection: int = 100
    messages_per_minute: float = 0  # 0: unlimited
    pause_seconds: float = 60
    mx_suffixes: tuple[str, ...] = ()

    def matches(self, mx_hosts: tuple[str, ...]) -> bool:
        return any(h == s or h.endswith("." + s) for h in mx_hosts for s in self.mx_suffixes)


class ShapingError(ValueError):
    pass


class Shaping:
    def __init__(self, default: Rule, rules: list[Rule]):
        self.default = default
        self.rules = rules
        self._cache: dict[tuple[str, ...], Rule] = {}

    @classmethod
    def load(cls, path: str | Path | None = None) -> Shaping:
        path = Path(path) if path else DEFAULT_FILE
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as ex:
            raise ShapingError(f"shaping file {path}: {ex}") from ex
        default = replace(Rule(), **_fields(data.get("default", {}), path, "default"))
        rules = []
        for spec in data.get("rule", []):
            name = spec.get("name") or f"rule{len(rules) + 1}"
            suffixes = tuple(s.lower().strip(".") for s in spec.get("mx_suffixes", []))
            if not suffixes:
                raise ShapingError(f"shaping file {path}: rule {name} has no mx_suffixes")
            rules.append(replace(default, name=name, mx_suffixes=suffixes, **_fields(spec, path, name)))
        return cls(default, rules)

    def for_site(self, mx_hosts: tuple[str, ...]) -> Rule:
        rule = self._cache.get(mx_hosts)
        if rule is None:
            rule = next((r for r in self.rules if r.matches(mx_hosts)), self.default)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[mx_hosts] = rule
        return rule


def _fields(spec: dict, path: Path, name: str) -> dict:
    out = {}
    for key in _FIELDS:
        if key in spec:
            value = spec[key]
            least = 1 if key in ("max_connections", "messages_per_connection") else 0
            if isinstance(value, bool) or not isinstance(value, int | float) or value < least:
                raise ShapingError(f"shaping file {path}: [{name}] {key} must be a number >= {least}")
            out[key] = value
    return out


class RateLimiter:
    """Token bucket: `per_minute` messages a minute, bursts up to one second's worth (at least 1)."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.burst = max(1.0, self.rate)
        self.tokens = self.burst
        self.at = time.monotonic()

    def delay(self) -> float:
        """Take one token; return how long to wait before sending (0: now)."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
