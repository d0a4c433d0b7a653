"""The ``ray`` executor: every unit a Ray task, on a local Ray or on a cluster.

Install the extra: ``pip install 'wsss-bench[ray]'``. ``-o ray.address=auto`` joins a running
cluster (``HOST:PORT`` a given one); empty starts a Ray on this machine. The context (the
slices, and for the evaluate stage the CAMs it needs) goes to the object store once per stage;
results (checkpoints, float16 CAMs, metrics) come back through it and the driver stores them,
so workers need no shared filesystem. A task whose worker dies is retried (``max_retries``); a
unit that fails for good ends the run with one line naming it, after every finished unit was
stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from wsss_bench.errors import UsageError
from wsss_bench.executors import UnitFailed
from wsss_bench.options import option

MISSING = ("the ray executor needs Ray: pip install 'wsss-bench[ray]' (or pip install ray), "
           "or run with --executor local or processes")


@dataclass(frozen=True)
class RayExecutor:
    name: str = "ray"
    description: str = ("every unit a Ray task (local Ray or a cluster: -o ray.address=auto); "
                        "needs the extra wsss-bench[ray]")
    address: str = option("", "Ray to join: auto or HOST:PORT for a running cluster; \"\" = "
                              "start a Ray on this machine")
    gpus_per_unit: float = option(1.0, "GPUs each task requests when the run computes on CUDA")
    cpus_per_unit: float = option(1.0, "CPUs each task requests")
    max_retries: int = option(3, "retries of a task whose worker process died")
    num_cpus: int = option(0, "CPUs of a Ray started here (0 = all of this machine's)")

    def __post_init__(self) -> None:
        for name in ("gpus_per_unit", "cpus_per_unit", "max_retries", "num_cpus"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more (got {getattr(self, name)})")

    def run(self, stage: Callable[[Any, Any], Any], units: Sequence[Any], context: Any
            ) -> Iterator[tuple[Any, Any]]:
        if not units:
            return
        ray = _ray()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": self.address or None,
                                      "include_dashboard": False, "log_to_driver": False}
            if not self.address and self.num_cpus:
                kwargs["num_cpus"] = self.num_cpus
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UsageError(f"-o ray.address={self.address or '(local)'}: cannot start or "
                                 f"reach Ray ({exc})") from None
        cuda = context.device.startswith("cuda")
        have = ray.cluster_resources()
        for resource, need in (("CPU", self.cpus_per_unit),
                               ("GPU", self.gpus_per_unit if cuda else 0)):
            if need > have.get(resource, 0):
                raise UsageError(f"-o ray.{resource.lower()}s_per_unit={need}: the Ray cluster "
                                 f"has {have.get(resource, 0):g} {resource}(s); no task could "
                                 f"ever start")
        task = ray.remote(_call).options(
            num_cpus=self.cpus_per_unit, num_gpus=self.gpus_per_unit if cuda else 0,
            max_retries=self.max_retries, retry_exceptions=False)
        shared = ray.put(context.portable(units))  # once per stage, not per task
        refs = {task.remote(stage, unit.portable(), shared, cuda): unit for unit in units}
        pending = list(refs)
        failed: UnitFailed | None = None  # every unit that failed for good
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    unit = refs[ref]
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
                        failed = UnitFailed.add(failed, unit, cause)
                        continue  # the other units go on: what finishes is kept
                    except ray.exceptions.RayError as exc:  # the worker died on every try
                        failed = UnitFailed.add(failed, unit, f"{type(exc).__name__} "
                                                f"after {self.max_retries} retries")
                        continue
                    yield unit, result
            if failed is not None:
                raise failed
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)


def _call(stage: Callable[[Any, Any], Any], unit: Any, context: Any, cuda: bool) -> Any:
    """A task: the stage on the task's device (Ray hides the other GPUs from it)."""
    import torch

    torch.set_num_threads(context.threads)
    return stage(unit, context.on("cuda" if cuda else "cpu"))


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError(MISSING) from None
    return ray
