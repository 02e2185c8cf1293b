"""The exceptions kernelprovider raises: one per failure a user can cause or meet.

Each subclasses the built-in that callers already catch (``FileNotFoundError`` for a missing
image, ``ValueError`` for a bad value, ``RuntimeError`` for a kernel that would not start), so
code written for jupyter_client keeps working, and each message names the object, what was
observed and the next step.
"""

from __future__ import annotations

from tornado.web import HTTPError

__all__ = [
    "KernelProviderError",
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


class KernelUnreachable(KernelProviderError, ConnectionError):
    """The kernel listens on its node, but the server cannot connect to its ports (a firewall)."""


class TunnelError(KernelUnreachable):
    """The SSH tunnel to a kernel's node (or login host) could not start or has ended."""


class EncryptionUnavailable(KernelProviderError, RuntimeError):
    """CurveZMQ encryption is required, but the server or the image's kernel lacks it."""
