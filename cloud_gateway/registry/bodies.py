"""What operators send the model registry: the bodies of rollouts and experiments
(validated at the HTTP edge, `extra="forbid"`)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Cohort = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9:_-]{0,63}$")]


class RolloutIn(BaseModel):
    """Body of `POST /v1/models/{version}/rollout`."""

    model_config = ConfigDict(extra="forbid")

    cohort: Cohort = "all"
    percent: Annotated[int, Field(ge=0, le=100)]


class ExperimentIn(BaseModel):
    """Body of `POST /v1/models/{version}/experiment`."""

    model_config = ConfigDict(extra="forbid")

    cohort: Cohort = "all"
    share: Annotated[float, Field(ge=0.01, le=0.99)] = 0.5
    """The candidate's share of the cohort (whole percent: the manifest's rollout)."""
    metric: Literal["conversion_per_impression"] = "conversion_per_impression"
    min_impressions: Annotated[int, Field(ge=1, le=10**9)] = 1000
    """Per arm, before any verdict."""
    alpha: Annotated[float, Field(gt=0, le=0.2)] = 0.05
    max_hours: Annotated[float, Field(gt=0, le=24 * 90)] = 168.0
    mde: Annotated[float, Field(gt=0, le=10)] = 0.2
    """The relative effect the test is tuned to (the mixture's scale)."""
    control: Annotated[int, Field(ge=1)] | None = None
    """Default: the version the cohort's profiles run now."""


class StopIn(BaseModel):
    """Body of `POST /v1/experiments/{id}/stop`: an operator ends an experiment by hand."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["rollback", "promote"]
    """`rollback`: the path a losing verdict takes (the halt); `promote`: a winning one's."""
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]
    """Why, kept with the experiment and in the audit log."""
