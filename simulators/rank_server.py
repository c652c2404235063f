"""A stand-in for the household coordinator's rank endpoint (issue 17) where `agent.household`
does not serve it yet: `rank_app` scores a thin device's candidates with the real scoring code
(`agent.decide.remote_rank.rank_for`, this process's model and household context) on
`POST /lan/v1/rank`; `HttpRanker` is a `RemoteRanker` that asks it. Used by the thin-device
tests and the `household_decision_p99_us` bench; `python -m simulators.rank_server --port N`
runs it as a process of its own (a full agent's model and onnxruntime)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

import aiohttp
from aiohttp import web

from agent.decide.remote import (
    RankRequest,
    RankResult,
    RemoteRankError,
    parse_request,
    parse_result,
)
from agent.errors import ScoringError
from agent.features.household import HouseholdContext
from agent.model.scoring import Model

log = logging.getLogger(__name__)

RANK_PATH = "/lan/v1/rank"
MAX_BODY = 1024 * 1024


def rank_app(model: Model | None, household: HouseholdContext | None = None) -> web.Application:
    """An aiohttp app answering `POST /lan/v1/rank` with `rank_for`'s scores."""
    from agent.decide.remote_rank import rank_for  # noqa: PLC0415 - numpy/model side only

    async def rank(request: web.Request) -> web.Response:
        try:
            asked = parse_request(json.loads(await request.read()))
        except (ValueError, RemoteRankError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        try:
            result = rank_for(model, asked, household)
        except ScoringError as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(result.to_wire())

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(RANK_PATH, rank)
    return app


class HttpRanker:
    """A `RemoteRanker` over HTTP to `base_url` (one session, kept open); None when the
    endpoint is down or answers anything but 200 with a valid result."""

    def __init__(self, base_url: str, *, timeout_s: float = 0.5) -> None:
        self._url = base_url.rstrip("/") + RANK_PATH
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.failures = 0

    async def rank(self, request: RankRequest) -> RankResult | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.post(self._url, json=request.to_wire()) as resp:
                if resp.status != 200:
                    self.failures += 1
                    return None
                body: Any = await resp.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            self.failures += 1
            return None
        try:
            return parse_result(body, request.offers)
        except RemoteRankError:
            self.failures += 1
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _serve(port: int) -> None:
    from agent.model.scoring import load_default_model  # noqa: PLC0415

    runner = web.AppRunner(rank_app(load_default_model()))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"ready {port}", flush=True)  # the parent waits for this line
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.rank_server")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.port))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
