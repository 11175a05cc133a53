"""Backend cooldown: a backend that failed `cooldown_after_failures` times in a row is left
alone for `cooldown_s`, so queries stop waiting on it and go to the next backend at once.

The counts and the cooldowns live in Redis, so every worker process sees the same state. Redis
is advisory here: if it cannot be reached, every backend counts as available and failures go
uncounted, because a broken Redis must not stop routing.
"""

from __future__ import annotations

import logging

import redis

from onnxq.payloads import get_redis
from onnxq.settings import get_settings
from workers.routing.config import Routing

log = logging.getLogger(__name__)

# Count one failure; at the threshold, reset the count and start the cooldown. One script, so
# that two processes failing at once cannot both miss (or both pass) the threshold.
_RECORD_FAILURE = """
local failures = redis.call('INCR', KEYS[1])
if failures >= tonumber(ARGV[1]) then
    redis.call('DEL', KEYS[1])
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
    return 1
end
return 0
"""


def _failures_key(name: str) -> str:
    return f"{get_settings().redis_namespace}:router:failures:{name}"


def _cooldown_key(name: str) -> str:
    return f"{get_settings().redis_namespace}:router:cooldown:{name}"


def available(name: str) -> bool:
    """False while backend `name` cools down; True otherwise, and when Redis cannot say."""
    try:
        return not get_redis().exists(_cooldown_key(name))
    except redis.RedisError as exc:
        log.warning("backend cooldown unknown (Redis: %s); treating %s as available", type(exc).__name__, name)
        return True


def record_failure(name: str, routing: Routing) -> bool:
    """Count a failure of backend `name`; True if it has just entered its cooldown."""
    cooldown_ms = max(1, round(routing.cooldown_s * 1000))
    try:
        script = get_redis().register_script(_RECORD_FAILURE)
        entered = script(
            keys=[_failures_key(name), _cooldown_key(name)], args=[routing.cooldown_after_failures, cooldown_ms]
        )
    except redis.RedisError as exc:
        log.warning("backend %s: failure not counted (Redis: %s)", name, type(exc).__name__)
        return False
    if entered:
        log.warning(
            "backend %s: %d failures in a row, cooling down for %s s",
            name,
            routing.cooldown_after_failures,
            routing.cooldown_s,
        )
    return bool(entered)


def record_success(name: str) -> None:
    """Backend `name` answered: its failures are no longer in a row."""
    try:
        get_redis().delete(_failures_key(name))
    except redis.RedisError as exc:
        log.warning("backend %s: success not recorded (Redis: %s)", name, type(exc).__name__)
