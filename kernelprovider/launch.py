"""The launch plan: what one kernel start runs, from the facts it is planned from.

A provisioner's ``launch_plan(context)`` turns a :class:`LaunchContext` (the kernel's argv,
working directory, environment, runtime, node facts, image facts) into a :class:`LaunchPlan`
(argv, variables, binds, verdicts, notes) without starting anything. ``pre_launch`` gathers
the facts and executes the plan; ``doctor`` gathers the same facts and prints it, so the two
cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .apptainer import Bind, RuntimeInfo
from .compat import HostFacts, ImageFacts, Verdict

__all__ = ["LaunchContext", "LaunchPlan"]


@dataclass(frozen=True)
class LaunchContext:
    """The facts one launch is planned from.

    ``inner`` is the kernel's argv as it runs inside the image (placeholders filled);
    ``env`` the environment the runtime starts with; ``host`` the node's driver and GPUs
    (None: not known, e.g. a Slurm node before allocation); ``image`` the image's facts
    (None: not read); ``job_id``/``node_addr`` the Slurm job and the node address (doctor
    passes placeholders); ``spec_env`` the kernelspec's own variables, already substituted,
    which a Slurm step carries into the container.
    """

    inner: list[str]
    cwd: str
    env: Mapping[str, str]
    runtime: RuntimeInfo
    host: HostFacts | None = None
    image: ImageFacts | None = None
    job_id: str = "JOB_ID"
    node_addr: str = "NODE_ADDR"
    spec_env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class LaunchPlan:
    """What a start runs: ``argv``; ``env``, the variables added to the runtime's environment
    (runtime variables and the container's, in APPTAINERENV_/SINGULARITYENV_ form);
    ``container_env``, the container's variables by their own names; ``binds``; the CUDA
    ``verdicts`` (and, for a report, launch problems as "fail" verdicts); ``notes``."""

    argv: list[str]
    env: dict[str, str]
    container_env: dict[str, str]
    binds: list[Bind]
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
