"""The Lua scripts of ``cache/lua/``, loaded once and run by SHA.

Each script is read from the package at import and identified by its SHA-1. A call sends
EVALSHA; when Redis answers NOSCRIPT (first use, restart, SCRIPT FLUSH) the script is loaded
with SCRIPT LOAD and the call sent again, as redis-py's ``register_script`` does. Pipelines
are handled here too, rerunning only the calls that Redis refused with NOSCRIPT: those did
nothing, so a rerun is exact. Driver errors are left to the caller's boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import RedisCluster
from redis.exceptions import NoScriptError, RedisError

from cache.connect import RedisClient

Arg = str | bytes | int | float


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: bytes
    sha: str

    @classmethod
    def from_package(cls, name: str) -> LuaScript:
        source = resources.files("cache").joinpath("lua", f"{name}.lua").read_bytes()
        return cls(name, source, hashlib.sha1(source).hexdigest())

    async def run(self, redis: RedisClient, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await redis.script_load(self.source)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    script: LuaScript
    keys: Sequence[str]
    args: Sequence[Arg]


VERSIONED_SET = LuaScript.from_package("versioned_set")
ADVANCE_WATERMARK = LuaScript.from_package("advance_watermark")
LEASE_TOKENS = LuaScript.from_package("lease_tokens")
MEMBERSHIP = LuaScript.from_package("membership")
SEGMENT_JOB = LuaScript.from_package("segment_job")
LOOKUP = LuaScript.from_package("lookup")
SHARD_WATERMARK = LuaScript.from_package("shard_watermark")
ALL_SCRIPTS = (
    VERSIONED_SET, ADVANCE_WATERMARK, LEASE_TOKENS, MEMBERSHIP, SEGMENT_JOB, LOOKUP,
    SHARD_WATERMARK,
)


async def load_all(redis: RedisClient) -> None:
    """Load every script up front (at start-up), so no first call pays for NOSCRIPT."""
    for script in ALL_SCRIPTS:
        await redis.script_load(script.source)


async def run_pipelined(
    redis: RedisClient,
    calls: Sequence[ScriptCall],
    then: Sequence[Sequence[Arg]] = (),
) -> list[Any]:
    """Run ``calls`` in one pipeline followed by the raw commands ``then``; return the calls'
    results in order.

    When some calls met NOSCRIPT, their scripts are loaded and those calls run again in a
    second pipeline, followed by ``then`` again: commands in ``then`` (a PUBLISH of the
    invalidations) must come after every write, and must be harmless to repeat.
    Raises the first other error a call or command met, after the whole pipeline ran.
    """
    results = await pipelined_results(redis, calls, then)
    for result in results:
        if isinstance(result, RedisError):
            raise result
    return results[: len(calls)]


async def pipelined_results(
    redis: RedisClient,
    calls: Sequence[ScriptCall],
    then: Sequence[Sequence[Arg]] = (),
) -> list[Any]:
    """The results of ``calls`` then ``then`` in one pipeline, each call's error left in its
    place rather than raised, after the NOSCRIPT reruns ``run_pipelined`` describes."""
    results = await _pipeline(redis, calls, then)
    missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
    if missing:
        for script in {calls[i].script for i in missing}:
            await redis.script_load(script.source)
        rerun = await _pipeline(redis, [calls[i] for i in missing], then)
        for i, result in zip(missing, rerun, strict=False):
            results[i] = result
        results[len(calls) :] = rerun[len(missing) :]
    return results


async def _pipeline(
    redis: RedisClient, calls: Sequence[ScriptCall], then: Sequence[Sequence[Arg]]
) -> list[Any]:
    staged = isinstance(redis, RedisCluster) and calls and then
    async with redis.pipeline(transaction=False) as pipe:
        for call in calls:
            # As a raw command: redis-py refuses ``evalsha`` in a cluster pipeline (for its
            # own script cache), while routing the raw command by its keys as it should.
            pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
        if not staged:
            for command in then:
                pipe.execute_command(*command)
        results: list[Any] = await pipe.execute(raise_on_error=False)
    if staged:
        # A cluster pipeline sends each node its share at once, so a publish on one node may
        # run before the writes it announces ran on the others: it goes once they answered.
        async with redis.pipeline(transaction=False) as pipe:
            for command in then:
                pipe.execute_command(*command)
            results.extend(await pipe.execute(raise_on_error=False))
    return results
