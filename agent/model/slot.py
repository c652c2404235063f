"""The model slot: the model decisions use now, the last good one before it, the last failure.

One holder the updater swaps into and decisions read from, so no part keeps a stale model.
"""

from __future__ import annotations

from agent.model.scoring import Model


class ModelSlot:
    """`current` (None: rank by priority), `previous` (where a run-time failure goes back to)."""

    __slots__ = ("current", "last_error", "previous")

    def __init__(self, current: Model | None = None) -> None:
        self.current = current
        self.previous: Model | None = None
        self.last_error: str | None = None

    @property
    def version(self) -> int | None:
        return self.current.version if self.current is not None else None

    def get(self) -> Model | None:
        return self.current

    def current_version(self) -> int | None:
        return self.version

    def swap(self, model: Model) -> None:
        """Later decisions use `model` (one reference assignment); the one it replaces is
        kept as the last good model."""
        if self.current is not None:
            self.previous = self.current
        self.current = model

    def restore(self, current: Model, previous: Model | None) -> None:
        """Start-up: a kept update runs, with the one below it (else the default) as fallback."""
        self.previous = previous if previous is not None else self.current
        self.current = current

    def failed(self, model: Model, error: str) -> tuple[Model | None, bool]:
        """`model` failed at run time: go back to the last good one. Returns the model to
        rank with now and whether this call rolled back (False: replaced meanwhile)."""
        if model is not self.current:
            return self.current, False
        good = self.previous
        if good is not None and good.version == model.version:
            good = None
        self.current, self.previous = good, None
        self.last_error = error
        return good, True
