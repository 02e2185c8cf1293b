"""The option table: one row reaches the trait, the sbatch argv, the rejection and the CLI."""

from __future__ import annotations

import pytest
from traitlets import TraitError

from kernelprovider.cli.install import InstallApp
from kernelprovider.cli.scan import ScanApp
from kernelprovider.options import CONTAINER_OPTIONS, SLURM_OPTIONS, rejection_keys
from kernelprovider.provisioner import ContainerProvisioner
from kernelprovider.slurm import SlurmProvisioner, build_sbatch_argv, rejection_message


def install_app(argv: list[str]) -> InstallApp:
    InstallApp.clear_instance()
    app = InstallApp()
    app.initialize(argv)
    return app


def test_reservation_is_a_trait_with_its_help() -> None:
    prov = SlurmProvisioner(kernel_id="k", kernel_spec=None, reservation="maint")
    assert prov.reservation == "maint"
    trait = SlurmProvisioner.class_traits(config=True)["reservation"]
    assert "--reservation" in trait.help
    assert SlurmProvisioner(kernel_id="k", kernel_spec=None).reservation == ""


def test_reservation_is_checked_like_every_slurm_value() -> None:
    with pytest.raises(TraitError, match="reservation"):
        SlurmProvisioner(kernel_id="k", kernel_spec=None, reservation="--uid=0")


def test_reservation_reaches_sbatch() -> None:
    argv = build_sbatch_argv("kp-1", partition="gpu", reservation="maint", extra_args=["-v"])
    assert argv[-3:] == ["--partition=gpu", "--reservation=maint", "-v"]
    assert not any(a.startswith("--reservation") for a in build_sbatch_argv("kp-1"))


def test_reservation_named_when_slurm_refuses_it() -> None:
    says = "sbatch: error: Batch job submission failed: Requested reservation is invalid"
    assert rejection_keys(says, {"reservation": "x"}) == ["reservation", "partition"]
    msg = rejection_message(says, {"reservation": "maint", "partition": "gpu", "mem": "4G"})
    assert "(reservation=maint, partition=gpu)" in msg


def test_reservation_reaches_the_install_cli_and_the_kernelspec() -> None:
    app = install_app(["--image=/i/a.sif", "--slurm", "--reservation=maint"])
    _, spec = app.build()
    assert spec["metadata"]["kernel_provisioner"]["config"]["reservation"] == "maint"
    assert "reservation" in InstallApp.aliases and "reservation" in ScanApp.aliases
    local = install_app(["--image=/i/a.sif", "--reservation=maint"])
    assert "reservation" not in local.build()[1]["metadata"]["kernel_provisioner"]["config"]
    InstallApp.clear_instance()


@pytest.mark.parametrize("option", [*CONTAINER_OPTIONS, *SLURM_OPTIONS], ids=lambda o: o.name)
def test_every_row_is_a_trait_with_its_default(option) -> None:
    cls = SlurmProvisioner if option in SLURM_OPTIONS else ContainerProvisioner
    trait = cls.class_traits(config=True)[option.name]
    assert trait.help == option.help
    if option.name != "state_dir":  # its default is computed (jupyter data dir)
        assert trait.default() == option.default


@pytest.mark.parametrize("option", [o for o in (*CONTAINER_OPTIONS, *SLURM_OPTIONS) if o.cli])
def test_every_cli_option_has_a_flag(option) -> None:
    names = {**InstallApp.aliases, **InstallApp.flags}
    assert option.cli in names
