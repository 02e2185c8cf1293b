"""Honest parents: the container behaviour is a mixin, and overrides call super()."""

from __future__ import annotations

import inspect

import pytest
from jupyter_client.provisioning import LocalProvisioner
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase

from kernelprovider.container import ContainerMixin
from kernelprovider.provisioner import ContainerProvisioner
from kernelprovider.slurm import SlurmProvisioner

#: Hooks whose parent implementation does something (the abstract ones have no body).
CONCRETE_HOOKS = (
    "pre_launch",
    "post_launch",
    "launch_kernel",
    "get_provisioner_info",
    "load_provisioner_info",
    "shutdown_requested",
    "get_shutdown_wait_time",
    "get_stable_start_time",
    "cleanup",
)


def test_each_provisioner_is_what_it_says() -> None:
    assert issubclass(ContainerProvisioner, LocalProvisioner)
    assert issubclass(SlurmProvisioner, KernelProvisionerBase)
    assert not issubclass(SlurmProvisioner, LocalProvisioner)
    assert ContainerMixin in ContainerProvisioner.__mro__
    assert ContainerMixin in SlurmProvisioner.__mro__


def test_the_mixin_overrides_no_jupyter_client_hook() -> None:
    hooks = {n for n in (*vars(KernelProvisionerBase), *vars(LocalProvisioner))}
    own = {n for n, v in vars(ContainerMixin).items() if inspect.isfunction(v)}
    assert own & hooks == set()


@pytest.mark.parametrize("cls", [ContainerProvisioner, SlurmProvisioner])
def test_overrides_of_concrete_hooks_call_super(cls: type) -> None:
    for name in CONCRETE_HOOKS:
        parent = next(c for c in cls.__mro__[1:] if name in vars(c))
        if name not in vars(cls) or getattr(getattr(parent, name), "__isabstractmethod__", False):
            continue
        assert "super()" in inspect.getsource(vars(cls)[name]), f"{cls.__name__}.{name}"


def test_site_wide_container_settings_reach_slurm_kernels() -> None:
    from traitlets.config import Config

    config = Config()
    config.ContainerProvisioner.binds = ["/scratch"]
    config.ContainerProvisioner.gpu = "none"
    config.SlurmProvisioner.gpu = "nvccli"  # the Slurm section wins where both speak
    prov = SlurmProvisioner(config=config, kernel_id="k", kernel_spec=None)
    assert prov.binds == ["/scratch"] and prov.gpu == "nvccli"
    assert SlurmProvisioner.section_names()[-2:] == ["ContainerProvisioner", "SlurmProvisioner"]
