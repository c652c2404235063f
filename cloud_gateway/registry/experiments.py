"""Model experiments: a candidate model against the control on a stable share of a cohort,
decided by a sequential test, then promoted or rolled back (HTTP: `cloud_gateway.api.models`).

`POST /v1/models/{version}/experiment` with `{"cohort", "share", "metric", "min_impressions",
"alpha", "max_hours"}` rolls the candidate out at `share` of the cohort through the
registry's signed manifest: devices split by the stable hash the agent already applies to a
manifest's rollout (`protocol.assign.in_rollout` of the device id and the experiment id,
which is the manifest's rollout key `model:<name>:<version>`); the others keep the control.
The model version is logged with each outcome, so each arm's figures come from the outcomes
(`cloud_gateway.db.experiments.arm_counts`); the test is `experiment_stats.decide`.

`Experiments.run` (a gateway loop run by the lease holder only) looks every tick: a winner
is promoted (the candidate re-signed at 100 % of the cohort); a candidate that hurts
conversion, or one with no verdict past `max_hours`, is rolled back through the registry's
halt path (the control republished as a new version); a candidate halted for crashing ends
its experiment too. Each decision is taken once (a lease per experiment, then a conditional
update) and audited. `Experiments.stop` (`POST /v1/experiments/{id}/stop`) is an operator's
decision taken the same way: a rollback or a promotion now, the experiment `stopped`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from cloud_gateway.db import experiments as sql
from cloud_gateway.db import leases
from cloud_gateway.db import registry as registry_sql
from cloud_gateway.db.audit import audit
from cloud_gateway.errors import Conflict, GatewayError, InvalidInput, NotFound
from cloud_gateway.registry.bodies import ExperimentIn, RolloutIn, StopIn
from cloud_gateway.registry.checks import Health, cohort_profiles
from cloud_gateway.registry.experiment_stats import ArmCounts, Decision, Plan, Verdict, decide
from cloud_gateway.runtime.wiring import Wiring
from protocol.assign import in_rollout
from protocol.ids import format_time, parse_time

log = logging.getLogger(__name__)

DECIDE_CLAIM_S = 120.0
"""A worker deciding an experiment holds its claim this long (a decision takes a few
publishes)."""
TICK_S = 60.0
"""How often the loop looks: verdicts take hours; each look reads the arms' outcomes."""


class Registry(Protocol):
    """What experiments need of the model registry (`ModelRegistry`): its wiring, the
    rollout and the halt."""

    @property
    def wiring(self) -> Wiring: ...

    async def rollout(
        self, version: int, body: RolloutIn, base_url: str, who: str = "gateway"
    ) -> dict[str, Any]: ...

    async def halt(
        self, version: int, health: Health, reason: str | None = None
    ) -> dict[str, Any] | None: ...


def experiment_id(name: str, version: int) -> str:
    """The experiment's id: the candidate manifest's rollout key (`agent.model.update`)."""
    return f"model:{name}:{version}"


def in_candidate(device_id: str, experiment: str, share: float) -> bool:
    """Whether a device runs the candidate (else the control): what the device computes."""
    return in_rollout(device_id, experiment, round(share * 100))


@dataclass(frozen=True, slots=True)
class Stop:
    """An operator's stop (`POST /v1/experiments/{id}/stop`): who, the outcome, why."""

    who: str
    outcome: str
    reason: str

    def fields(self) -> dict[str, str]:
        """The columns and audit fields it is kept in."""
        return {"stopped_by": self.who, "stop_outcome": self.outcome, "stop_reason": self.reason}


def _check_running(row: dict[str, Any]) -> None:
    """Conflict naming the state unless the experiment is still running."""
    if row["state"] != "running":
        raise Conflict(f"experiment {row['id']} already ended ({row['state']})")


def _stop_doc(row: dict[str, Any]) -> dict[str, Any] | None:
    """An operator's stop as the API shows it (None: not stopped by hand)."""
    if row.get("stopped_by") is None:
        return None
    return {"by": row["stopped_by"], "outcome": row["stop_outcome"], "reason": row["stop_reason"]}


def _plan(row: dict[str, Any]) -> Plan:
    return Plan(
        alpha=float(row["alpha"]),
        min_impressions=int(row["min_impressions"]),
        max_hours=float(row["max_hours"]),
        mde=float(row["mde"]),
    )


class Experiments:
    """Starts, looks at, decides and shows model experiments; acts through the registry."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._db = registry.wiring.db
        self._counters = registry.wiring.counters
        self._holder = f"experiments-{uuid.uuid4().hex[:12]}"

    def _now(self) -> datetime:
        return self._db.clock()

    async def start(
        self, version: int, body: ExperimentIn, base_url: str, who: str
    ) -> dict[str, Any]:
        """Roll the candidate `version` out at `body.share` of `body.cohort` as an experiment."""
        model = await self._db.call(registry_sql.get_model, version)
        if model is None:
            raise NotFound("model", str(version))
        manifest = json.loads(model["manifest"])
        earlier = await self._db.call(sql.of_candidate, version)
        if earlier is not None:
            raise Conflict(f"model v{version} already had an experiment ({earlier['state']})")
        profiles = cohort_profiles(body.cohort, manifest["profiles"])
        control = body.control
        if control is None:
            published = await self._db.call(registry_sql.published)
            running = {published[p] for p in profiles if p in published}
            if len(running) != 1:
                raise Conflict(
                    f"the cohort's profiles run {sorted(running) or 'no registered model'}: "
                    "pass `control`"
                )
            control = running.pop()
        if control >= version:
            raise InvalidInput(f"control v{control}: must be older than the candidate v{version}")
        if await self._db.call(registry_sql.get_model, control) is None:
            raise NotFound("model", str(control))
        busy = await self._db.call(sql.running_on, [control, version])
        if busy is not None:
            raise Conflict(f"experiment {busy['id']} is running on v{control} or v{version}")
        percent = round(body.share * 100)
        row: dict[str, Any] = {
            "id": experiment_id(manifest["name"], version),
            "control": control,
            "candidate": version,
            "cohort": body.cohort,
            "share": percent / 100,
            "metric": body.metric,
            "min_impressions": body.min_impressions,
            "alpha": body.alpha,
            "max_hours": body.max_hours,
            "mde": body.mde,
            "state": "running",
            "started_at": format_time(self._now()),
            "started_by": who,
        }
        await self._db.call(sql.insert_experiment, row)
        try:
            await self._registry.rollout(
                version, RolloutIn(cohort=body.cohort, percent=percent), base_url, who
            )
        except GatewayError:
            await self._db.call(sql.delete_experiment, row["id"])
            raise
        self._counters["model_experiments_started"] += 1
        await self._db.call(
            audit, who, "model.experiment.start", str(version), {**row, "profiles": profiles}
        )
        log.info("experiment %s: v%d against v%d at %d%%", row["id"], version, control, percent)
        started = await self.of_model(version)
        assert started is not None  # inserted above
        return started

    async def arms(self, row: dict[str, Any]) -> tuple[ArmCounts, ArmCounts]:
        control, candidate = int(row["control"]), int(row["candidate"])
        counts = await self._db.call(
            sql.arm_counts, (control, candidate), row["cohort"], row["started_at"]
        )
        return counts[control], counts[candidate]

    async def look(self, row: dict[str, Any]) -> Verdict:
        """The test's decision on one running experiment now (pure but for the counting)."""
        control, candidate = await self.arms(row)
        hours = (self._now() - parse_time(row["started_at"])).total_seconds() / 3600
        return decide(control, candidate, _plan(row), hours)

    async def decide_due(self) -> list[str]:
        """Look at every running experiment; act on those with a decision. Returns their ids."""
        decided = []
        for row in await self._db.call(sql.experiments, "running"):
            halt = await self._db.call(registry_sql.halt_of, int(row["candidate"]))
            if halt is not None:
                verdict = Verdict("roll_back", f"candidate halted: {halt['reason']}", 0.0, 1.0)
            else:
                verdict = await self.look(row)
            if verdict.decision != "continue" and await self._act(row, verdict, halt is None):
                decided.append(str(row["id"]))
        return decided

    async def stop(self, experiment_id: str, body: StopIn, who: str) -> dict[str, Any]:
        """An operator ends a running experiment now: `rollback` takes the path a losing
        verdict takes (the halt), `promote` a winning one's; state `stopped` either way, with
        who, the outcome, the reason and the arms' figures at that moment. Once across
        workers, as verdicts are (the same claim and conditional update)."""
        row = await self._db.call(sql.get_experiment, experiment_id)
        if row is None:
            raise NotFound("experiment", experiment_id)
        _check_running(row)
        halt = await self._db.call(registry_sql.halt_of, int(row["candidate"]))
        if halt is not None and body.outcome == "promote":
            raise Conflict(f"experiment {experiment_id}: its candidate was halted, not promoted")
        looked = await self.look(row)
        decision: Decision = "promote" if body.outcome == "promote" else "roll_back"
        reason = f"stopped by {who} ({body.outcome}): {body.reason}"
        verdict = Verdict(decision, reason, looked.lift, looked.p_value)
        if not await self._act(row, verdict, halt is None, Stop(who, body.outcome, body.reason)):
            now = await self._db.call(sql.get_experiment, experiment_id)
            assert now is not None  # experiments are never deleted once started
            _check_running(now)
            raise Conflict(f"experiment {experiment_id} is being decided now: try again")
        stopped = await self.doc(await self._db.call(sql.get_experiment, experiment_id))
        assert stopped is not None
        return stopped

    async def _act(
        self, row: dict[str, Any], verdict: Verdict, withdraw: bool, stop: Stop | None = None
    ) -> bool:
        """Promote or roll back once across workers: the claim, then the conditional update.
        `stop`: an operator's, recorded as such (state `stopped`, audited by them)."""
        claim = f"model-experiment:{row['id']}"
        if not await self._db.call(leases.acquire, claim, self._holder, DECIDE_CLAIM_S):
            return False
        try:
            return await self._act_claimed(row, verdict, withdraw, stop)
        finally:
            # a failed rollout must not keep an operator's stop out for the claim's lifetime
            await self._db.call(leases.release, self._holder, [claim])

    async def _act_claimed(
        self, row: dict[str, Any], verdict: Verdict, withdraw: bool, stop: Stop | None
    ) -> bool:
        current = await self._db.call(sql.of_candidate, int(row["candidate"]))
        if current is None or current["state"] != "running":
            return False
        candidate = int(row["candidate"])
        control_arm, candidate_arm = await self.arms(row)
        if verdict.decision == "promote":
            state = "promoted"
            base = await self._base_url(candidate)
            await self._registry.rollout(
                candidate, RolloutIn(cohort=row["cohort"], percent=100), base, "gateway"
            )
        else:
            state = "rolled_back" if verdict.decision == "roll_back" else "stopped"
            if withdraw:
                health = await self._db.call(registry_sql.health, candidate)
                await self._registry.halt(
                    candidate, health, reason=f"experiment {row['id']}: {verdict.reason}"
                )
        if stop is not None:
            state = "stopped"
        decision = {
            "state": state,
            "verdict": verdict.reason,
            "decided_at": format_time(self._now()),
            "arms": [control_arm.doc(), candidate_arm.doc()],
            **(stop.fields() if stop is not None else {}),
        }
        if not await self._db.call(sql.record_decision, row["id"], decision):
            return False
        self._counters[f"model_experiments_{state}"] += 1
        await self._db.call(
            audit,
            "gateway" if stop is None else stop.who,
            "model.experiment.decide" if stop is None else "model.experiment.stop",
            str(candidate),
            {
                "id": row["id"],
                "state": state,
                "verdict": verdict.reason,
                "lift": verdict.lift,
                "p_value": verdict.p_value,
                **(stop.fields() if stop is not None else {}),
            },
        )
        log.warning("experiment %s %s: %s", row["id"], state, verdict.reason)
        return True

    async def _base_url(self, version: int) -> str:
        rollouts = await self._db.call(registry_sql.rollouts_of, version)
        for rollout in rollouts:
            url = json.loads(rollout["manifest"]).get("url")
            if isinstance(url, str) and "/v1/models/" in url:
                return url.rsplit("/v1/models/", 1)[0]
        raise Conflict(f"model v{version} has no rollout to promote")

    async def run(self, tick_s: float = TICK_S) -> None:
        """The gateway loop (lease holder only): decide what is due every `tick_s`."""
        while True:
            try:
                await self.decide_due()
            except GatewayError as exc:
                log.warning("experiment look failed: %s", exc)
            await asyncio.sleep(tick_s)

    async def doc(self, row: dict[str, Any] | None) -> dict[str, Any] | None:
        """An experiment as the API shows it: live arms while running, the decision's after."""
        if row is None:
            return None
        if row["state"] == "running":
            arms = [arm.doc() for arm in await self.arms(row)]
        else:
            arms = json.loads(row["arms"] or "[]")
        return {
            "id": row["id"],
            "control": int(row["control"]),
            "candidate": int(row["candidate"]),
            "share": float(row["share"]),
            "state": row["state"],
            "verdict": row["verdict"],
            "decided_at": row["decided_at"],
            "started_at": row["started_at"],
            "arms": arms,
            "stop": _stop_doc(row),
        }

    async def of_model(self, version: int) -> dict[str, Any] | None:
        return await self.doc(await self._db.call(sql.of_candidate, version))

    async def list(self) -> list[dict[str, Any]]:
        rows = await self._db.call(sql.experiments)
        return [doc for row in rows if (doc := await self.doc(row)) is not None]
