"""``jupyter kernelprovider doctor``: host, image and kernel reports on the command line."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from jupyter_core.application import base_aliases, base_flags
from traitlets import Bool, TraitError, Unicode, default
from traitlets.config import Application

from ..apptainer import is_image_uri
from ..compat import HostFacts
from ..doctor import (
    KernelReport,
    exit_status,
    host_lines,
    hypothetical_host,
    kernel_report,
    make_provisioner,
    report_dict,
    report_lines,
    summary_lines,
)
from ..doctor.report import _fail
from ..gpu import host_facts
from ..kernelspec import container_kernelspecs
from .base import KernelSpecApp

__all__ = ["DoctorApp"]


class DoctorApp(KernelSpecApp):
    """``jupyter kernelprovider doctor [KERNEL|IMAGE]``: driver, GPUs, image, argv, verdicts."""

    name = "jupyter-kernelprovider-doctor"
    description = (
        "Show this node's NVIDIA driver and GPUs and, for a kernel or image, its CUDA/TF, the "
        "command it would run and the verdicts. Exit 1 when a verdict fails."
    )
    examples = """
    jupyter kernelprovider doctor                       # host + every container kernel
    jupyter kernelprovider doctor tf18-cuda92-gpu       # one installed kernel
    jupyter kernelprovider doctor /software/images/tf-1.8-cuda-9.2.sif --driver-version 390.46
    jupyter kernelprovider doctor IMAGE --compute-capability 9.0 --gpu-name "NVIDIA H200"
    """
    aliases = {
        **base_aliases,
        "driver-version": "DoctorApp.driver_version",
        "compute-capability": "DoctorApp.compute_capability",
        "gpu-name": "DoctorApp.gpu_name",
        "node": "DoctorApp.node",
    }
    flags = {
        **base_flags,
        "json": ({"DoctorApp": {"json_output": True}}, "Print JSON."),
    }

    driver_version = Unicode(
        None, allow_none=True, help="Judge a node with this NVIDIA driver (e.g. 580.95.05)."
    ).tag(config=True)
    compute_capability = Unicode(
        None, allow_none=True, help="Judge a node whose GPUs have this compute capability."
    ).tag(config=True)
    gpu_name = Unicode(None, allow_none=True, help="Name of the hypothetical node's GPU.").tag(
        config=True
    )
    node = Unicode(None, allow_none=True, help="Name of the node (default: this host).").tag(
        config=True
    )
    json_output = Bool(False, help="Print JSON instead of text.").tag(config=True)

    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        # Only container kernels matter here: no warning about the server's own python3.
        return KernelSpecManager(parent=self, data_dir=self.data_dir, ensure_native_kernel=False)

    def initialize(self, argv: Any = None) -> None:
        """Parse the command line, then also read the single-user servers' config file
        (``jupyter_server_config``), where site-wide ``c.ContainerProvisioner.*`` defaults
        live, so the provisioners built here resolve their traits as the server would."""
        super().initialize(argv)
        try:
            Application.load_config_file(self, "jupyter_server_config", path=self.config_file_paths)
        except Exception as e:  # a broken server config must not hide the diagnosis
            self.log.warning("Could not read jupyter_server_config: %s", e)

    def usage_error(self, message: str) -> None:
        """End with one line and exit status 2 (1 means: a verdict failed)."""
        print(f"jupyter kernelprovider doctor: {message}", file=sys.stderr)
        self.exit(2)

    def node_facts(self) -> tuple[HostFacts, dict[str, str], bool]:
        """(facts, which were given on the command line, whether any were) for the node."""
        real = host_facts(node=self.node or None)
        try:
            host, given = hypothetical_host(
                real,
                driver=self.driver_version,
                compute_capability=self.compute_capability,
                gpu_name=self.gpu_name,
                node=self.node,
            )
        except ValueError as e:
            self.usage_error(str(e))
        return host, given, bool(set(given) - {"node"})

    def report_for(
        self, host: HostFacts, hypothetical: bool, kernel: str | None, image: str | None
    ) -> KernelReport:
        """Build the provisioner for a kernel name or an image path and judge it."""
        spec = None
        if kernel is not None:
            spec = self.kernel_spec_manager.get_kernel_spec(kernel)
        try:
            prov = make_provisioner(self, kernel=kernel, spec=spec, image=image)
        except (TraitError, ValueError) as e:
            configured = ((spec.metadata if spec else {}) or {}).get("kernel_provisioner", {})
            report = KernelReport(
                image=image or configured.get("config", {}).get("image") or "?", kernel=kernel
            )
            _fail(report, "config", f"The kernel's provisioner config is invalid: {e}")
            return report
        slurm = prov.__class__.__name__ == "SlurmProvisioner"
        return kernel_report(
            prov,
            host,
            kernel=kernel,
            display_name=spec.display_name if spec is not None else None,
            node_known=hypothetical or not slurm,
        )

    def start(self) -> None:
        """Print the host, then one full report (KERNEL|IMAGE) or a summary of every kernel."""
        if len(self.extra_args) > 1:
            self.usage_error("give at most one KERNEL or IMAGE (see --help).")
        host, given, hypothetical = self.node_facts()
        reports: list[KernelReport] = []
        if self.extra_args:
            target = self.extra_args[0]
            kernels = container_kernelspecs(self.kernel_spec_manager)
            if target in kernels:
                reports.append(self.report_for(host, hypothetical, target, None))
            elif os.path.exists(target) or "/" in target or is_image_uri(target):
                image = target if is_image_uri(target) else os.path.abspath(target)
                reports.append(self.report_for(host, hypothetical, None, image))
            else:
                try:
                    self.kernel_spec_manager.get_kernel_spec(target)
                    known = True
                except NoSuchKernel:
                    known = False
                if known:
                    self.usage_error(
                        f"Kernel {target!r} does not run in a container (it uses no "
                        "kernelprovider provisioner); nothing to check."
                    )
                self.usage_error(
                    f"No container kernel named {target!r} and no image at {target}. See "
                    "'jupyter kernelprovider list', or give the image's path."
                )
        else:
            for name in container_kernelspecs(self.kernel_spec_manager):
                reports.append(self.report_for(host, hypothetical, name, None))

        if self.json_output:
            print(json.dumps(report_dict(host, given, reports), indent=1))
            self.exit(exit_status(reports))
        lines = host_lines(host, given)
        if self.extra_args:
            for report in reports:
                lines += ["", *report_lines(report)]
        else:
            lines += ["", f"Kernels ({len(reports)}):", *summary_lines(reports)]
            if reports:
                lines.append("Details: jupyter kernelprovider doctor NAME")
        print("\n".join(lines))
        self.exit(exit_status(reports))
