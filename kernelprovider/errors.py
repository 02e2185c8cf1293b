"""The exceptions kernelprovider raises: one per failure a user can cause or meet.

Each subclasses the built-in that callers already catch (``FileNotFoundError`` for a missing
image, ``ValueError`` for a bad value, ``RuntimeError`` for a kernel that would not start), so
code written for jupyter_client keeps working, and each message names the object, what was
observed and the next step.
"""

from __future__ import annotations

import contextlib
import functools
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from tornado.web import HTTPError
from traitlets import TraitError

__all__ = [
    "KernelProviderError",
    "no_image_error",
    "ImageNotFound",
    "ImageNotReadable",
    "NotAContainerImage",
    "RuntimeNotFound",
    "BindSourceNotFound",
    "InvalidBind",
    "KernelStartError",
    "KernelStartTimeout",
    "DriverIncompatible",
    "DriverDirNotFound",
    "SlurmError",
    "SlurmSubmitError",
    "SlurmJobFailed",
    "SlurmQueueTimeout",
    "SlurmStartCancelled",
    "SlurmJobEnded",
    "KernelPending",
    "StateDirError",
    "KernelConfigError",
    "FilesystemTimeout",
    "HostNameError",
    "HostFileError",
    "named_error",
    "named_errors",
    "named_hook",
    "KernelUnreachable",
    "TunnelError",
    "EncryptionUnavailable",
]


class KernelProviderError(HTTPError):
    """Base class of every error kernelprovider raises on purpose.

    It is also a tornado ``HTTPError`` because jupyter_server answers any other exception
    from a kernel start with "Unhandled error"; as an HTTPError the user's JupyterLab shows
    this message (the next step included) instead.
    """

    def __init__(
        self, message: str, status_code: int = 500, reason: str = "Kernel start failed"
    ) -> None:
        super().__init__(status_code, message, reason=reason)
        self.message = message
        self.args = (message,)

    def __str__(self) -> str:
        return self.message


class ImageNotFound(KernelProviderError, FileNotFoundError):
    """The configured image path does not exist."""


class ImageNotReadable(KernelProviderError, PermissionError):
    """The image exists but this user cannot read it."""


class NotAContainerImage(KernelProviderError, ValueError):
    """The path exists but holds no SIF, squashfs or ext3 image and is no sandbox directory."""


class RuntimeNotFound(KernelProviderError, FileNotFoundError):
    """Neither apptainer nor singularity (or the configured path) can be run."""


class BindSourceNotFound(KernelProviderError, FileNotFoundError):
    """A bind's source path does not exist on the host that starts the container."""


class InvalidBind(KernelProviderError, ValueError):
    """A bind specification that apptainer would misread (relative path, comma, bad option)."""


class KernelStartError(KernelProviderError, RuntimeError):
    """The kernel process ended before it was ready; the message carries its log's last lines."""


class KernelStartTimeout(KernelProviderError, TimeoutError):
    """The kernel process stayed alive but never became ready within the boot timeout."""


class DriverIncompatible(KernelProviderError, RuntimeError):
    """The image's CUDA cannot work with the node's NVIDIA driver or GPU (verdict: fail)."""


class DriverDirNotFound(KernelProviderError, FileNotFoundError):
    """driver_dir mode found no directory of driver libraries for the detected driver."""


class SlurmError(KernelProviderError, RuntimeError):
    """Slurm could not be asked (commands missing, controller unreachable)."""


class SlurmSubmitError(SlurmError):
    """sbatch rejected the job; the message carries Slurm's own words."""


class SlurmJobFailed(SlurmError):
    """The allocation ended (failed, cancelled, timed out) before or while the kernel ran."""


class SlurmQueueTimeout(SlurmError, TimeoutError):
    """The job stayed pending longer than the queue timeout and was cancelled."""


class SlurmStartCancelled(SlurmError):
    """The kernel was shut down while its job waited in the queue; the job was cancelled."""


class SlurmJobEnded(SlurmJobFailed):
    """Slurm ended the job under a running kernel and no new job is queued for it."""


class KernelPending(KernelProviderError, RuntimeError):
    """Interrupt or restart of a kernel whose job still waits in the Slurm queue (HTTP 409)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 409, reason="Kernel still waiting in the Slurm queue")


class StateDirError(KernelProviderError, PermissionError):
    """The per-user state directory cannot be created, is unsafe, or cannot be written."""


class FilesystemTimeout(KernelProviderError, TimeoutError):
    """A filesystem call of a start did not return in time (a hung shared filesystem)."""


class KernelConfigError(KernelProviderError, ValueError):
    """A kernel's provisioner config holds a value the provisioner refuses."""


def no_image_error(kernel: str) -> KernelConfigError:
    """The error of a kernel without an image: raised by a start, printed by doctor."""
    return KernelConfigError(
        f"Kernel {kernel or '?'} has no image configured. Set 'image' in the kernelspec's "
        "kernel_provisioner config (or reinstall it with 'jupyter kernelprovider install "
        "--image')."
    )


class HostNameError(KernelProviderError, OSError):
    """A host or node name did not resolve."""


class HostFileError(KernelProviderError, OSError):
    """The host refused a file or process operation that a start needs."""


def named_error(error: BaseException, kernel: str) -> KernelProviderError | None:
    """The named error (with a next step) for a built-in one met while starting ``kernel``.

    The table behind :func:`named_errors`, in order (subclasses before their parents):
    TraitError and ValueError -> KernelConfigError, socket.gaierror -> HostNameError,
    TimeoutError -> KernelStartTimeout, other OSError -> HostFileError. None for anything
    else (it propagates as it is).
    """
    k = kernel or "?"
    doctor = (
        f"'jupyter kernelprovider doctor {kernel}'" if kernel else "'jupyter kernelprovider doctor'"
    )
    if isinstance(error, KernelProviderError):
        return error
    if isinstance(error, (TraitError, ValueError)):
        text = str(error).rstrip(".")
        return KernelConfigError(
            f"Kernel {k} has an invalid provisioner config: {text}. Fix the kernelspec's "
            f"kernel_provisioner config; {doctor} shows what a start would use."
        )
    if isinstance(error, socket.gaierror):
        return HostNameError(
            f"Kernel {k}: a host name did not resolve ({error.strerror or error}). Check the "
            "node's NodeAddr ('scontrol show node') or set SlurmProvisioner.kernel_ip."
        )
    if isinstance(error, TimeoutError):
        return KernelStartTimeout(
            f"Kernel {k}: an operation of the start timed out ({error or 'no answer'}). Try "
            "again; if it keeps happening, tell your admins (a slow shared filesystem?)."
        )
    if isinstance(error, OSError):
        where = f" ({error.filename})" if error.filename else ""
        return HostFileError(
            f"Kernel {k}: {error.strerror or error}{where} while starting. Check that path's "
            "permissions and free space, or tell your admins."
        )
    return None


@contextlib.contextmanager
def named_errors(kernel: str) -> Iterator[None]:
    """Turn the built-in errors of a provisioner hook into named ones (:func:`named_error`).

    Used around the hooks jupyter_server calls (pre_launch, launch_kernel), so JupyterLab's
    dialog shows a sentence with a next step instead of "Unhandled error".
    """
    try:
        yield
    except KernelProviderError:
        raise
    except (TraitError, ValueError, OSError) as e:
        named = named_error(e, kernel)
        if named is None:  # pragma: no cover - every listed type has a row
            raise
        raise named from e


_Hook = TypeVar("_Hook", bound=Callable[..., Awaitable[Any]])


def named_hook(hook: _Hook) -> _Hook:
    """Decorate a provisioner hook so its built-in errors leave it as named ones
    (:func:`named_errors`, with the provisioner's ``kernel_name``)."""

    @functools.wraps(hook)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with named_errors(getattr(self, "kernel_name", "") or ""):
            return await hook(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class KernelUnreachable(KernelProviderError, ConnectionError):
    """The kernel listens on its node, but the server cannot connect to its ports (a firewall)."""


class TunnelError(KernelUnreachable):
    """The SSH tunnel to a kernel's node (or login host) could not start or has ended."""


class EncryptionUnavailable(KernelProviderError, RuntimeError):
    """CurveZMQ encryption is required, but the server or the image's kernel lacks it."""
