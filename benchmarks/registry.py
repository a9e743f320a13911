"""The one registry of scenarios, and the context a scenario runs in.

A scenario is one small function, registered by decorating it::

    @scenario("noop", "No-op throughput, 4 workers",
              full={"tasks": 100_000}, quick={"tasks": 20_000}, smoke={"tasks": 300})
    def noop(ctx: Context) -> List[Result]:
        samples = ctx.measure({"ThreadPoolExecutor(4)": ..., "taskqueue": ...})
        return [ctx.compare(samples, THROUGHPUT, "ThreadPoolExecutor(4)",
                            target=Target.at_least(2.0))]

Every scenario gives its sizes for each mode (``full``, ``quick``,
``smoke``); the sizes used end up in the JSON next to the figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

from . import harness
from .harness import Contender, Metric, Result, Samples, Target
from .progress import Progress

__all__ = ["MODES", "Scenario", "Context", "SCENARIOS", "scenario"]

MODES = ("full", "quick", "smoke")
"""How big a run is: the whole suite, a quick look, or CI's check that nothing rotted."""


@dataclass(frozen=True)
class Scenario:
    """A registered scenario: its name, title, sizes per mode and the function."""

    name: str
    title: str
    sizes: Mapping[str, Mapping[str, Any]]
    run: Callable[[Context], List[Result]]


class Context:
    """What a scenario function is handed: its sizes, its rounds, and helpers.

    Args:
        spec: the scenario being run.
        mode: one of :data:`MODES`.
        rounds: rounds to keep per measurement.
        warmup: rounds to run first and throw away (a scenario may ask for none).
        progress: where to report which run is going on, if anywhere.
    """

    def __init__(self, spec: Scenario, mode: str, *, rounds: int, warmup: int,
                 progress: Optional[Progress] = None) -> None:
        self.spec = spec
        self.mode = mode
        self.rounds = rounds
        self.warmup = warmup
        self.sizes: Dict[str, Any] = dict(spec.sizes[mode])
        """This mode's sizes, e.g. ``{"tasks": 100000}``."""
        self._progress = progress

    def measure(self, contenders: Mapping[str, Contender], *, label: str = "",
                warmup: Optional[int] = None, rounds: Optional[int] = None) -> Samples:
        """Run the contenders interleaved for this context's rounds.

        Args:
            contenders: name -> callable returning its figures.
            label: what the progress line shows besides the round ("workers=8").
            warmup: warm-up rounds, if not this context's default.
            rounds: rounds to keep, if not this context's (a count that
                does not vary from run to run needs fewer).
        """
        kept = self.rounds if rounds is None else rounds

        def on_run(round_: int, name: str) -> None:
            if self._progress is not None:
                which = "warm-up" if round_ == 0 else f"round {round_}/{kept}"
                self._progress.update(" ".join(p for p in (label, which, name) if p))

        return harness.interleave(contenders, kept,
                                  warmup=self.warmup if warmup is None else warmup,
                                  on_run=on_run)

    def compare(self, samples: Samples, metric: Metric, baseline: str, *,
                subject: str = "taskqueue", target: Optional[Target] = None,
                note: Optional[str] = None, **params: Any) -> Result:
        """Return the row for ``subject`` against ``baseline`` on ``metric``.

        ``params`` (such as ``workers=8``) are added to the row's sizes.
        """
        return harness.compare(samples, scenario=self.spec.name, metric=metric,
                               subject=subject, baseline=baseline, target=target,
                               sizes={**self.sizes, **params}, note=note)

    def not_measured(self, samples: Optional[Samples], metric: Metric, baseline: str, note: str,
                     *, subject: str = "taskqueue", target: Optional[Target] = None,
                     **params: Any) -> Result:
        """Return the row of a baseline that could not run, saying why."""
        return harness.not_measured(samples, scenario=self.spec.name, metric=metric,
                                    subject=subject, baseline=baseline, note=note,
                                    target=target, sizes={**self.sizes, **params})


SCENARIOS: Dict[str, Scenario] = {}
"""Every registered scenario by name, in the order they were registered."""


def scenario(name: str, title: str, *, full: Mapping[str, Any], quick: Mapping[str, Any],
             smoke: Mapping[str, Any]) -> Callable[[Callable[[Context], List[Result]]],
                                                   Callable[[Context], List[Result]]]:
    """Register the decorated function as the scenario ``name``.

    Args:
        name: what ``--only`` takes; unique.
        title: one line saying what is measured.
        full, quick, smoke: the sizes for each mode.

    Raises:
        ValueError: the name is taken or empty.
    """
    if not name or name in SCENARIOS:
        raise ValueError(f"scenario name must be new and non-empty, got {name!r}")

    def register(fn: Callable[[Context], List[Result]]) -> Callable[[Context], List[Result]]:
        SCENARIOS[name] = Scenario(name, title, {"full": full, "quick": quick, "smoke": smoke}, fn)
        return fn

    return register
