"""``jupyter kernelprovider scan DIR...``: one kernelspec per image found, kept up to date."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_core.application import base_flags
from jupyter_core.paths import SYSTEM_JUPYTER_PATH
from traitlets import Bool, Unicode, default

from ..apptainer import parse_bind
from ..errors import KernelProviderError, RuntimeNotFound
from ..image import image_facts
from ..kernelspec import install_kernelspec
from ..scan import (
    SCAN_MARK,
    Candidate,
    Change,
    Identity,
    _read_existing,
    assign_names,
    display_from_template,
    find_images,
    identify,
    image_labels,
    logo_sources,
    plan_changes,
)
from .base import InstallOptionsApp
from .install import InstallApp

__all__ = ["ScanApp"]

# install's options (everything but --image/--name), addressed to this app.
_scan_aliases = {
    k: v.replace("InstallApp.", "ScanApp.", 1)
    for k, v in InstallApp.aliases.items()
    if k not in ("image", "name", "display-name")
}
_scan_aliases["display-name"] = "ScanApp.display_name_template"
_scan_flags = {
    **{
        k: ({"ScanApp" if c == "InstallApp" else c: v for c, v in cfg.items()}, text)
        for k, (cfg, text) in InstallApp.flags.items()
    },
    **base_flags,
    "prune": (
        {"ScanApp": {"prune": True}},
        "Remove kernelspecs this command made whose image is gone from a scanned directory.",
    ),
    "dry-run": ({"ScanApp": {"dry_run": True}}, "Print the plan; write nothing."),
    "recursive": ({"ScanApp": {"recursive": True}}, "Also look in subdirectories."),
}


class ScanApp(InstallOptionsApp):
    """Install or update one kernelspec per SIF image found in directories.

    Every option of ``install`` except --image/--name applies to each image (Slurm mode,
    binds, GPU mode, compat check, --prefix/--sys-prefix/--user); only the values given are
    written, so site config keeps deciding the rest.
    """

    name = "jupyter-kernelprovider-scan"
    description = (
        "Install or update one kernelspec per image (*.sif) found in directories; "
        "idempotent, --prune removes those it made for images that are gone."
    )
    examples = """
    jupyter kernelprovider scan /software/images --sys-prefix --dry-run
    jupyter kernelprovider scan /software/images --sys-prefix --prune
    jupyter kernelprovider scan /software/images --slurm --partition gpu --gpus 1 \\
        --display-name "{auto} on Slurm" --prefix /opt/jupyter
    """
    aliases = _scan_aliases
    flags = _scan_flags

    prune = Bool(
        False, help="Remove kernelspecs made by scan whose image is gone from a scanned directory."
    ).tag(config=True)
    dry_run = Bool(False, help="Print what would change; write nothing.").tag(config=True)
    recursive = Bool(
        False, help="Look for images in subdirectories too (default: the directories only)."
    ).tag(config=True)
    display_name_template = Unicode(
        "",
        help="Display name for each image; placeholders {auto} (from labels), {name}, {stem}, "
        "{kind}, {cuda}, {tensorflow}, {pytorch}, {python}.",
    ).tag(config=True)

    #: The directories named on the command line (positional arguments).
    directories: list[str] = []

    @default("kernel_spec_manager")
    def _quiet_kernel_spec_manager(self) -> KernelSpecManager:
        # Our own "add"/"update" lines say what was installed; keep the manager's warnings
        # (an install directory that Jupyter does not search) and drop its INFO lines.
        log = self.log.getChild("kernelspecs")
        log.setLevel(logging.WARNING)
        return KernelSpecManager(parent=self, data_dir=self.data_dir, log=log)

    def parse_command_line(self, argv: Any = None) -> None:
        """Take the positional arguments as the directories to scan; called by ``initialize``."""
        super().parse_command_line(argv)
        self.directories = list(self.extra_args)

    def kernels_dir(self) -> str:
        """The directory the kernelspecs go to: what install_kernel_spec picks for the same
        user/prefix choice (user data dir, PREFIX/share/jupyter, or the system directory)."""
        if self.user:
            return self.kernel_spec_manager.user_kernel_dir
        if self.prefix:
            return os.path.join(os.path.abspath(self.prefix), "share", "jupyter", "kernels")
        return os.path.join(SYSTEM_JUPYTER_PATH[0], "kernels")

    def spec_for(self, candidate: Candidate, name: str, display: str) -> dict[str, Any]:
        """kernel.json for one image: install's builder with this image's display name, the
        scan mark, and no GPU for images without CUDA unless asked for."""
        spec = self.build_spec(candidate.image, display)
        config = spec["metadata"]["kernel_provisioner"]["config"]
        if not candidate.identity.gpu:
            if self.gpu is None:
                config["gpu"] = "none"
            if self.slurm and not self.gpus:
                config["gpus"] = "0"
        spec["metadata"][SCAN_MARK] = {
            "scan": {"image": candidate.image, "source_dir": candidate.source_dir}
        }
        return spec

    def read_image(self, path: str, source_dir: str) -> Candidate:
        """Metadata of one image -> Candidate; raises KernelProviderError/TimeoutError."""
        facts = image_facts(path, self.runtime or "auto")
        labels, env = image_labels(path, self.runtime)
        ident = identify(path, labels, env, facts)
        if self.display_name_template:
            ident = Identity(
                ident.name,
                display_from_template(self.display_name_template, ident),
                ident.gpu,
                ident.stem,
                ident.versions,
                "--display-name",
            )
        return Candidate(path, source_dir, ident)

    def start(self) -> None:
        """Find, read, plan, then (unless --dry-run) write; one line per kernelspec."""
        if not self.directories:
            self.fail("usage: jupyter kernelprovider scan DIR... (directories holding .sif images)")
        if self.user and self.prefix:
            self.fail("--user and --prefix/--sys-prefix exclude each other; pick one.")
        try:
            for bind in self.binds:
                parse_bind(bind)
        except KernelProviderError as e:
            self.fail(str(e))
        dirs = [os.path.abspath(os.path.expanduser(d)) for d in self.directories]
        images: list[tuple[str, str]] = []
        for d in dirs:
            if not os.path.isdir(d):
                self.fail(f"Directory {d} not found. Pass directories that hold .sif images.")
            try:
                found = find_images(d, self.recursive)
            except OSError as e:
                self.fail(f"Cannot list {d}: {e.strerror}. Check its permissions.")
            if not found:
                print(f"No .sif images in {d}{' or below' if self.recursive else ''}.")
            images += ((p, d) for p in found if p not in {i for i, _ in images})
        self.check_template(len(images))

        candidates: list[Candidate] = []
        skipped: list[Change] = []
        for path, source_dir in images:
            try:
                candidates.append(self.read_image(path, source_dir))
            except RuntimeNotFound as e:
                self.fail(str(e))
            except (KernelProviderError, TimeoutError, subprocess.TimeoutExpired, OSError) as e:
                skipped.append(Change("skip", os.path.basename(path), image=path, detail=str(e)))

        kernels_dir = self.kernels_dir()
        existing, existing_logos = _read_existing(kernels_dir)
        names = assign_names(candidates, existing)
        wanted: dict[str, tuple[str, dict[str, Any], dict[str, bytes]]] = {}
        logo_paths: dict[str, dict[str, str]] = {}
        for c in candidates:
            name, display = names[c.image]
            logo_paths[name] = logo_sources(c.identity.gpu)
            logos = {}
            for dest, src in logo_paths[name].items():
                with open(src, "rb") as f:
                    logos[dest] = f.read()
            wanted[name] = (c.image, self.spec_for(c, name, display), logos)
        found = [c.image for c in candidates]
        changes = plan_changes(wanted, existing, existing_logos, dirs, found, self.prune)
        for change in changes:
            change.logos = logo_paths.get(change.name, {})

        self.report(changes + skipped, kernels_dir)
        if not self.dry_run:
            for change in changes:
                self.apply(change, kernels_dir)
        counts = {v: sum(c.verb == v for c in changes) for v in ("add", "update", "unchanged")}
        removed = sum(c.verb == "remove" for c in changes)
        stale = sum(c.verb == "stale" for c in changes)
        summary = (
            f"{len(images)} image(s): {counts['add']} added, {counts['update']} updated, "
            f"{counts['unchanged']} unchanged, {removed} removed"
            + (f", {stale} stale" if stale else "")
            + (f", {len(skipped)} skipped" if skipped else "")
            + f" in {kernels_dir}"
            + (" (dry run: nothing written)." if self.dry_run else ".")
        )
        print(summary)
        if skipped:
            self.fail(
                f"{len(skipped)} image(s) could not be read (see 'skip' above); "
                "the others were handled."
            )

    def check_template(self, n_images: int) -> None:
        """End with one line when --display-name cannot work (before any image is read)."""
        template = self.display_name_template
        if not template:
            return
        if n_images > 1 and "{" not in template:
            self.fail(
                f"--display-name {template!r} would give all {n_images} images the same name; "
                "use placeholders such as {auto}, {stem} or {cuda}."
            )
        try:
            display_from_template(template, Identity("x", "x", True, "x"))
        except (KeyError, IndexError, ValueError) as e:
            self.fail(
                f"--display-name {template!r}: {e} is not a placeholder here; use {{auto}}, "
                "{name}, {stem}, {kind}, {cuda}, {tensorflow}, {pytorch} or {python}."
            )

    def report(self, changes: Sequence[Change], kernels_dir: str) -> None:
        """Print the plan: verb, kernel name, display name, image, detail; one line each."""
        width = max([len(c.name) for c in changes] + [4])
        for c in changes:
            shown = f'"{c.display_name}"' if c.display_name else ""
            detail = f"  ({c.detail})" if c.detail else ""
            print(f"{c.verb:<9}  {c.name:<{width}}  {shown}  {c.image}{detail}".rstrip())

    def apply(self, change: Change, kernels_dir: str) -> None:
        """Write or remove one kernelspec (called for every change unless --dry-run)."""
        try:
            if change.verb in ("add", "update") and change.spec is not None:
                install_kernelspec(
                    change.spec,
                    change.name,
                    user=self.user,
                    prefix=os.path.abspath(self.prefix) if self.prefix and not self.user else None,
                    logos=change.logos,
                    ksm=self.kernel_spec_manager,
                )
            elif change.verb == "remove":
                shutil.rmtree(os.path.join(kernels_dir, change.name))
        except OSError as e:
            self.fail(
                f"Cannot write kernelspec {change.name} in {kernels_dir} ({e.strerror or e}). "
                "Use --user, --sys-prefix or --prefix, or run as an admin for a system-wide "
                "install."
            )
