"""The named points of a run at which task transfer, prune and DDP plug in.

train.run goes through the points of RunHook in the order they are written there; a hook
overrides the ones it needs (the defaults do nothing) and reads or sets the run's objects on
the context (context.RunContext). Which hooks a run gets is chosen from its config
(train.chosen_hooks): transfer.TransferHook, prune.PruneRun / prune.KeepsModel,
distributed.DdpHook."""
from __future__ import annotations


class RunHook:
    """Every point, doing nothing; the order below is the order of the run."""

    def reruns(self, ctx) -> bool:
        """A record exists, but must the run be redone? (transfer: the encoder it was asked
        to keep is gone)"""
        return False

    def after_model(self, ctx) -> None:
        """The model is loaded, nothing is built from it yet (transfer: the source run's
        encoder, and its name in the fixed mask's cache key)."""

    def builds_child(self, ctx) -> bool:
        """Does this process build the child network? (DDP: a fixed mask on rank 0 alone)"""
        return True

    def after_child(self, ctx) -> None:
        """(DDP: rank 0's fixed mask on every rank)"""

    def after_loaders(self, ctx) -> None:
        """Before the schedule is sized from the train loader (DDP: this rank's slice of
        every batch)."""

    def replaces_training(self, ctx) -> dict | None:
        """A training summary instead of training (prune: CT_D's kept model)."""
        return None

    def before_training(self, ctx) -> None:
        """Right before the loop (DDP: the model wrapped, dropout reseeded per rank)."""

    def after_training(self, ctx) -> None:
        """(DDP: the ranks' parameters and masks compared)"""

    def writes(self, ctx) -> bool:
        """Does this process evaluate, log and write the record? (DDP: rank 0 alone) Asked
        for the logger, the evaluations between steps and after training."""
        return True

    def after_evaluation(self, ctx) -> None:
        """The dev sets are evaluated (prune: non-child weights zeroed, evaluated again)."""

    def after_record(self, ctx) -> dict:
        """The record is built; returns what it adds (transfer: the encoder kept, the other
        tasks evaluated; CT_D: its model kept for prune)."""
        return {}


class Hooks(tuple):
    """A run's hooks, in the order they are called at each point."""

    def run(self, point: str, ctx) -> None:
        for hook in self:
            getattr(hook, point)(ctx)

    def any(self, point: str, ctx) -> bool:
        return any([getattr(hook, point)(ctx) for hook in self])

    def all(self, point: str, ctx) -> bool:
        return all([getattr(hook, point)(ctx) for hook in self])

    def first(self, point: str, ctx):
        """The first hook's answer that is not None (None if none answers)."""
        for hook in self:
            answer = getattr(hook, point)(ctx)
            if answer is not None:
                return answer
        return None

    def merged(self, point: str, ctx) -> dict:
        out = {}
        for hook in self:
            out.update(getattr(hook, point)(ctx))
        return out
