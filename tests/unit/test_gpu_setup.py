"""The provisioner's GPU pre-flight: driver directories, library order, GPU selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernelprovider.apptainer import Bind
from kernelprovider.compat import HostFacts, ImageFacts
from kernelprovider.errors import DriverDirNotFound
from kernelprovider.provisioner import ContainerProvisioner

H200 = HostFacts(node="gpu01", driver="580.159.04")


def provisioner(**config) -> ContainerProvisioner:
    return ContainerProvisioner(kernel_id="k1", kernel_spec=None, **config)


def test_driver_dir_binds_libs_and_bins_first(tmp_path: Path) -> None:
    d = tmp_path / "nvidia" / "580.159.04"
    (d / "lib").mkdir(parents=True)
    (d / "bin").mkdir()
    p = provisioner(driver_dir=str(tmp_path / "nvidia" / "{driver_version}"))
    facts = ImageFacts(name="x.sif", ld_library_path="/usr/local/cuda/compat:/usr/lib")
    binds, variables = p.driver_setup(H200, facts)
    assert binds == [Bind(str(d / "lib"), "/nvlib", "ro"), Bind(str(d / "bin"), "/nvbin", "ro")]
    # the host driver's libraries come before any libcuda the image ships (compat dir)
    assert variables == {
        "LD_LIBRARY_PATH": "/nvlib:/usr/local/cuda/compat:/usr/lib",
        "PREPEND_PATH": "/nvbin",
    }


def test_driver_dir_by_major_and_flat_layout(tmp_path: Path) -> None:
    (tmp_path / "580").mkdir()
    p = provisioner(driver_dir=str(tmp_path / "{driver_major}"), driver_lib_path="/drv")
    binds, variables = p.driver_setup(H200)
    assert binds == [Bind(str(tmp_path / "580"), "/drv", "ro")]
    assert variables == {"LD_LIBRARY_PATH": "/drv"}


def test_driver_dir_missing_for_this_driver(tmp_path: Path) -> None:
    p = provisioner(driver_dir=str(tmp_path / "{driver_version}"))
    with pytest.raises(DriverDirNotFound) as e:
        p.driver_setup(H200)
    assert str(e.value) == (
        f"No driver directory {tmp_path}/580.159.04 for NVIDIA driver 580.159.04 on node gpu01 "
        f"(driver_dir={tmp_path}/{{driver_version}}). Ask your admins to create it from the "
        "driver's libraries, or unset driver_dir to use --nv."
    )


def test_driver_dir_without_driver() -> None:
    p = provisioner(driver_dir="/software/nvidia/{driver_version}")
    with pytest.raises(DriverDirNotFound, match="node cpu01 has no NVIDIA driver loaded"):
        p.driver_setup(HostFacts(node="cpu01"))


def test_nv_mode_puts_apptainer_driver_libs_before_image_libcuda() -> None:
    p = provisioner()
    facts = ImageFacts(name="x.sif", ld_library_path="/usr/local/cuda/compat")
    _, variables = p.driver_setup(H200, facts)
    assert variables == {"LD_LIBRARY_PATH": "/.singularity.d/libs:/usr/local/cuda/compat"}


def test_nv_mode_leaves_ld_path_alone_when_the_image_sets_none() -> None:
    p = provisioner()
    assert p.driver_setup(H200, ImageFacts(name="x.sif")) == ([], {})


def test_cuda_dir_bound_read_only(tmp_path: Path) -> None:
    p = provisioner(cuda_dir=str(tmp_path))
    binds, _ = p.driver_setup(H200)
    assert binds == [Bind(str(tmp_path), "/usr/local/cuda", "ro")]


@pytest.mark.parametrize(
    ("config", "env", "runtime_vars", "container_vars"),
    [
        ({}, {"CUDA_VISIBLE_DEVICES": "1"}, {}, {}),
        ({"cleanenv": True}, {"CUDA_VISIBLE_DEVICES": "1,3"}, {}, {"CUDA_VISIBLE_DEVICES": "1,3"}),
        (
            {"gpu": "nvccli", "contain": True},
            {"CUDA_VISIBLE_DEVICES": "2"},
            {"NVIDIA_VISIBLE_DEVICES": "2"},
            {},
        ),
        ({"gpu": "nvccli"}, {"SLURM_JOB_GPUS": "0,1"}, {"NVIDIA_VISIBLE_DEVICES": "0,1"}, {}),
        ({"gpu": "nvccli"}, {}, {"NVIDIA_VISIBLE_DEVICES": "all"}, {}),
        ({"gpu": "none", "cleanenv": True}, {"CUDA_VISIBLE_DEVICES": "1"}, {}, {}),
    ],
)
def test_gpu_selection(config, env, runtime_vars, container_vars) -> None:
    assert provisioner(**config).gpu_selection(env) == (runtime_vars, container_vars)
