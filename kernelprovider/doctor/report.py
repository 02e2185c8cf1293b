"""Building a :class:`~.model.KernelReport`: the provisioner a start would configure, and what
it would meet and run (the I/O half of doctor).

:func:`make_provisioner` configures a provisioner exactly as a start would;
:func:`kernel_report` reads the facts a start reads (runtime, image, node) and takes argv,
variables and verdicts from the provisioner's own launch plan; :func:`kernel_summary` is
``list``'s one-line verdict. Blocking, as CLIs may.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from string import Template
from typing import Any

from jupyter_client.kernelspec import KernelSpec
from jupyter_core.paths import jupyter_runtime_dir
from traitlets import TraitError, Unicode
from traitlets.config import LoggingConfigurable

from ..apptainer import RuntimeInfo, check_bind_sources, check_image, find_runtime, is_image_uri
from ..compat import FrameworkBuild, HostFacts, Verdict
from ..errors import KernelProviderError, no_image_error
from ..image import image_compression, image_facts
from ..kernelspec import (
    PROVISIONER_NAME,
    SLURM_PROVISIONER_NAME,
    make_kernel_cmd,
    provisioner_class,
)
from .model import PLACEHOLDER_ID, KernelReport, short_reason


class _KernelStandIn(LoggingConfigurable):
    """Stands in for the KernelManager a provisioner normally belongs to.

    The provisioner reads its kernel name and connection file from its parent; config (site
    ``c.ContainerProvisioner.*`` values) flows through it from the app.
    """

    kernel_name = Unicode("")
    connection_file = Unicode("")


def make_provisioner(
    parent: Any,
    *,
    kernel: str | None = None,
    spec: KernelSpec | None = None,
    image: str | None = None,
) -> Any:
    """A ContainerProvisioner or SlurmProvisioner configured exactly as a start would be:
    the kernelspec's ``kernel_provisioner.config`` over the site config over the defaults.

    Called by :class:`DoctorApp` and ``list``. For a bare ``image`` a ContainerProvisioner
    with that image (and the site config) stands for "a kernel of this image". Raises
    TraitError for a config value the provisioner refuses.
    """
    prov_cfg: dict[str, Any] = {}
    name = PROVISIONER_NAME
    if spec is not None:
        stanza = (spec.metadata or {}).get("kernel_provisioner", {})
        name = stanza.get("provisioner_name", PROVISIONER_NAME)
        prov_cfg = dict(stanza.get("config") or {})
    if image is not None:
        prov_cfg["image"] = image
    cls = provisioner_class(name)
    stand_in = _KernelStandIn(parent=parent, kernel_name=kernel or "")
    if name == SLURM_PROVISIONER_NAME:
        stand_in.connection_file = ""  # set below, once state_dir is known
    else:
        stand_in.connection_file = os.path.join(
            jupyter_runtime_dir(), f"kernel-{PLACEHOLDER_ID}.json"
        )
    ks = spec or KernelSpec(argv=make_kernel_cmd(), display_name=kernel or "", language="python")
    prov = cls(kernel_id=PLACEHOLDER_ID, kernel_spec=ks, parent=stand_in, **prov_cfg)
    if name == SLURM_PROVISIONER_NAME:
        stand_in.connection_file = os.path.join(prov.state_dir, f"kernel-{PLACEHOLDER_ID}.json")
    return prov


def _inner_argv(prov: Any, connection_file: str) -> list[str]:
    """The kernelspec's argv with its placeholders filled, as KernelManager would."""
    spec = prov.kernel_spec
    argv = list(spec.argv) if spec is not None and spec.argv else make_kernel_cmd()
    ns = {
        "connection_file": connection_file,
        "resource_dir": getattr(spec, "resource_dir", "") or "",
        "prefix": sys.prefix,
    }
    return [re.sub(r"\{([A-Za-z_]+)\}", lambda m: ns.get(m.group(1), m.group(0)), a) for a in argv]


def _fail(report: KernelReport, check: str, message: str) -> None:
    report.verdicts.append(Verdict("fail", message, check))


def kernel_report(
    prov: Any,
    host: HostFacts,
    *,
    kernel: str | None = None,
    display_name: str | None = None,
    node_known: bool = True,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
) -> KernelReport:
    """Judge one configured provisioner against ``host``: image, runtime, binds, CUDA.

    Reads the facts a start reads (runtime, image, node) and prints the provisioner's own
    launch plan (``prov.launch_plan``, the one pre_launch executes), so what doctor prints
    is what a start would run. Launch problems (missing image,
    runtime, bind source, driver directory) become "fail" verdicts with the provisioner's own
    message. ``node_known`` is False for a Slurm kernel judged without a node's facts: then the
    CUDA verdicts and driver directory are left out with a note. Blocking.
    """
    slurm = hasattr(prov, "srun_args")  # SlurmProvisioner, without importing slurm.py
    report = KernelReport(
        image=prov.image,
        kernel=kernel,
        display_name=display_name,
        provisioner=SLURM_PROVISIONER_NAME if slurm else PROVISIONER_NAME,
        gpu=prov.gpu,
        compat_check=prov.compat_check,
        host=host if node_known else None,
    )
    cwd = os.path.abspath(cwd or os.getcwd())
    env = dict(os.environ if env is None else env)
    if not prov.image:
        _fail(report, "image", str(no_image_error(kernel or "")))
        return report
    uri = is_image_uri(prov.image)
    image_ok = True
    try:
        check_image(prov.image, kernel or "")
    except KernelProviderError as e:
        image_ok = False
        _fail(report, "image", str(e))
    if image_ok and not uri:
        try:
            report.compression = image_compression(prov.image)
        except OSError:
            pass  # check_image has just read it; a race is not doctor's business
    try:
        report.runtime = find_runtime(prov.runtime)
    except (KernelProviderError, OSError, subprocess.SubprocessError) as e:
        _fail(report, "runtime", str(e))
    if image_ok and report.runtime is not None and not uri:
        try:
            report.facts = image_facts(prov.image, runtime=report.runtime.path)
        except TimeoutError as e:
            report.verdicts.append(Verdict("warn", str(e), "image"))
        except KernelProviderError as e:
            _fail(report, "image", str(e))

    # What no plan can judge: a kernel without GPU, a node not known yet, a URI image.
    if prov.gpu == "none":
        report.verdicts.append(
            Verdict(
                "ok",
                f"{report.label} runs without a GPU (gpu=none), so the driver is not checked.",
                "gpu",
            )
        )
    elif not node_known:
        report.notes.append(
            "Slurm picks the node at start, so the CUDA verdicts need that node's facts: add "
            "--driver-version and --compute-capability of the partition's nodes (nvidia-smi "
            "--query-gpu=driver_version,compute_cap --format=csv on one of them)."
        )
    elif uri:
        report.verdicts.append(
            Verdict(
                "warn",
                f"{prov.image} is a URI, so its CUDA version cannot be read before a start; pull "
                "it ('apptainer pull') and point the kernel at the SIF file to have it checked.",
                "image",
            )
        )
    if prov.compat_check == "off" and prov.gpu != "none":
        report.notes.append("compat_check is off: a start does not check these verdicts.")

    # Binds, argv and variables: the provisioner's own launch plan, as a start builds it.
    try:
        check_bind_sources(prov.user_binds())
    except KernelProviderError as e:
        _fail(report, "binds", str(e))
    if not node_known and prov.driver_dir:
        report.notes.append(
            f"driver_dir {prov.driver_dir} is chosen on the node, by its driver version."
        )
    runtime = report.runtime or RuntimeInfo(
        "apptainer" if prov.runtime in ("", "auto") else prov.runtime, "apptainer", ""
    )
    connection_file = getattr(prov.parent, "connection_file", "") or ""
    spec_env = (getattr(prov.kernel_spec, "env", None) or {}) if prov.kernel_spec else {}
    # KernelProvisionerBase.pre_launch substitutes ${VAR} in the kernelspec's env this way.
    env.update({k: Template(v).safe_substitute(env) for k, v in spec_env.items()})
    ctx = prov.launch_context(
        prov.inner_command(_inner_argv(prov, connection_file)),
        cwd,
        env,
        host if node_known else None,
        report.facts if node_known and prov.reads_image_facts else None,
        runtime,
    )
    plan = prov.launch_plan(ctx, strict=False)
    if node_known and report.facts is not None and not prov.reads_image_facts:
        # compat_check off: a start reads nothing, but the report still says what it skips.
        report.verdicts.extend(prov.judge(report.facts, host))
    report.verdicts.extend(plan.verdicts)
    if slurm:  # which private path the kernel's traffic takes (SSH tunnel, CurveZMQ, none)
        from ..transport import transport_verdict

        checkable = image_ok and not uri and report.runtime is not None
        level, reason = transport_verdict(prov, runtime.path if checkable else None)
        report.verdicts.append(Verdict(level, reason, "transport"))
    report.argv = plan.argv
    report.env = plan.env
    report.notes.insert(
        0,
        f"{PLACEHOLDER_ID} and the connection file are placeholders: each start gets its own."
        + (" JOB_ID and NODE_ADDR come from Slurm." if slurm else ""),
    )
    return report


def kernel_verdict(app: Any, name: str, host: HostFacts) -> tuple[str, str]:
    """(level, short reason) of installed kernel ``name`` on ``host``; see
    :func:`kernel_summary`."""
    level, reason, _ = kernel_summary(app, name, host)
    return level, reason


def kernel_summary(app: Any, name: str, host: HostFacts) -> tuple[str, str, list[FrameworkBuild]]:
    """(level, short reason, the image's frameworks) of installed kernel ``name`` on ``host``.

    Called by ``jupyter kernelprovider list`` (``app`` is the ListApp: its config and
    KernelSpecManager) for its VERDICT and FRAMEWORKS columns; doctor NAME prints the full
    story.
    """
    spec = app.kernel_spec_manager.get_kernel_spec(name)
    try:
        prov = make_provisioner(app, kernel=name, spec=spec)
    except (TraitError, ValueError) as e:
        return "fail", f"The kernel's provisioner config is invalid: {e}", []
    slurm = hasattr(prov, "srun_args")
    report = kernel_report(prov, host, kernel=name, node_known=not slurm)
    frameworks = list(report.facts.frameworks) if report.facts is not None else []
    if slurm and report.level == "ok":
        return (
            "ok",
            "Image and runtime are fine here; the CUDA verdicts need the node Slurm picks "
            f"(jupyter kernelprovider doctor {name} --driver-version ...).",
            frameworks,
        )
    return report.level, short_reason(report.verdicts), frameworks
