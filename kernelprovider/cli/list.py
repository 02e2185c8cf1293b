"""``jupyter kernelprovider list``: the container kernels here, with their verdicts."""

from __future__ import annotations

import json
from typing import Any

from jupyter_core.application import base_flags
from traitlets import Bool

from ..apptainer import check_image
from ..doctor import framework_dict, framework_text, kernel_summary
from ..errors import KernelProviderError
from ..gpu import host_facts
from ..kernelspec import container_kernelspecs
from .base import KernelSpecApp

__all__ = ["ListApp"]


class ListApp(KernelSpecApp):
    """List the installed kernelspecs that run in containers."""

    name = "jupyter-kernelprovider-list"
    description = "List container kernelspecs: name, display name, image, runtime, GPU mode."
    flags = {
        **base_flags,
        "json": ({"ListApp": {"json_output": True}}, "Print JSON."),
    }
    json_output = Bool(False, help="Print JSON instead of a table.").tag(config=True)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per container kernelspec, with whether its image can be started here and
        its verdict on this host ("ok"/"warn"/"fail" and the worst reason's first sentence;
        ``jupyter kernelprovider doctor NAME`` prints all of them)."""
        kernels = container_kernelspecs(self.kernel_spec_manager)
        if not kernels:
            return []
        host = host_facts()  # once: nvidia-smi is the slow part
        rows = []
        for name, (resource_dir, spec) in kernels.items():
            prov = spec["metadata"]["kernel_provisioner"]
            config = prov.get("config", {})
            image = config.get("image", "")
            try:
                check_image(image, name)
                image_state = "ok"
            except KernelProviderError as e:
                image_state = type(e).__name__
            verdict, verdict_reason, frameworks = kernel_summary(self, name, host)
            rows.append(
                {
                    "name": name,
                    "display_name": spec.get("display_name", name),
                    "image": image,
                    "image_state": image_state,
                    "runtime": config.get("runtime", "auto"),
                    "gpu": config.get("gpu", "nv"),
                    "provisioner": prov.get("provisioner_name"),
                    "resource_dir": resource_dir,
                    "verdict": verdict,
                    "verdict_reason": verdict_reason,
                    "frameworks": [framework_dict(fw, host) for fw in frameworks],
                    "frameworks_text": "; ".join(framework_text(fw) for fw in frameworks),
                }
            )
        return rows

    def start(self) -> None:
        """Print the table (or JSON)."""
        rows = self.rows()
        if self.json_output:
            print(json.dumps(rows, indent=1))
            return
        if not rows:
            print(
                "No container kernelspecs installed. Add one with 'jupyter kernelprovider install'."
            )
            return
        cols = ["name", "display_name", "image", "image_state", "runtime", "gpu", "verdict"]
        heads = ["NAME", "DISPLAY NAME", "IMAGE", "IMAGE STATE", "RUNTIME", "GPU", "VERDICT"]
        if any(r["frameworks_text"] for r in rows):
            cols.append("frameworks_text")
            heads.append("FRAMEWORKS")
        widths = [
            max(len(h), *(len(str(r[c])) for r in rows)) for c, h in zip(cols, heads, strict=True)
        ]
        print("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)))
        for r in rows:
            print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))
