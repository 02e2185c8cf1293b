# Site defaults for kernelprovider: a sample Jupyter server config file, commented.
#
# Where it goes: any file the Jupyter servers of your users read, for example
#   /etc/jupyter/jupyter_server_config.py          (every server on the machine)
#   {sys.prefix}/etc/jupyter/jupyter_server_config.py  (every server of one environment,
#                                                    e.g. JupyterHub's single-user servers)
#   jupyter lab --config=/path/to/this/file.py      (one server)
# `jupyter --paths` lists the config directories a server searches.
#
# Precedence, trait by trait: a value in a kernelspec's metadata.kernel_provisioner.config wins
# over this file, which wins over the built-in defaults. `jupyter kernelprovider install` and
# `scan` write only the values you pass them, so whatever you set here keeps applying to the
# rest. ContainerProvisioner settings also apply to Slurm kernels (SlurmProvisioner is a
# subclass); SlurmProvisioner settings apply only to Slurm kernels. Every setting, with its
# default, is listed in the README's configuration reference.
#
# Checked by tests/hub/test_site_config.py: every name below is a real setting and every value
# passes its validation.

c = get_config()  # noqa: F821 - provided by Jupyter when it loads this file

# --- The server's kernel manager --------------------------------------------------------------

# kernelprovider's kernel manager (jupyter_server's AsyncMappingKernelManager plus what Slurm
# kernels need): shutting down a kernel whose job is still queued cancels the job at once
# instead of waiting for it to start; interrupt and restart of such a kernel answer at once;
# stopping the server cancels the queued jobs of its kernels; browser tabs follow a kernel
# that Slurm moved to a new job. Kernels of other provisioners behave as before.
c.ServerApp.kernel_manager_class = "kernelprovider.manager.SlurmAwareKernelManager"

# --- Every container kernel -------------------------------------------------------------------

# Directories users expect inside every image (each SRC[:DST[:ro|rw]], absolute paths).
c.ContainerProvisioner.binds = ["/scratch", "/software/datasets:/datasets:ro"]

# Refuse to start an image whose CUDA needs a newer driver than the node has ("enforce", the
# default), only log it ("warn"), or skip the check ("off").
c.ContainerProvisioner.compat_check = "enforce"

# GPU passthrough: "nv" (--nv, the default), "nvccli", "rocm" or "none" (a CPU-only site).
# c.ContainerProvisioner.gpu = "nv"

# Runtime: "auto" finds apptainer, then singularity, on PATH; or give a full path.
# c.ContainerProvisioner.runtime = "/usr/bin/apptainer"

# Driver directory mode, for images that need the host driver's libraries at a fixed place.
# c.ContainerProvisioner.driver_dir = "/software/nvidia/{driver_version}"

# --- Kernels on Slurm nodes (provisioner "slurm-apptainer-provisioner") -----------------------

c.SlurmProvisioner.partition = "gpu"
c.SlurmProvisioner.gpus = "1"
c.SlurmProvisioner.time_limit = "8:00:00"
# c.SlurmProvisioner.account = "my-group"
# c.SlurmProvisioner.qos = "interactive"

# The per-user state directory (connection file, lease, kernel log) must be on a filesystem
# the GPU nodes share. The default, <jupyter data dir>/kernelprovider (usually
# ~/.local/share/jupyter/kernelprovider), is fine where home directories are shared.
# c.SlurmProvisioner.state_dir = "/shared/jupyter-state/" + __import__("getpass").getuser()

# --- Long starts: what users see while a Slurm job waits in the queue -------------------------
#
# What jupyter_server and JupyterLab show (checked with jupyter_server 2.21 and JupyterLab 4.6
# in tests/browser/test_jupyterlab.py and by hand):
#
# * Nothing from Slurm reaches the page while the job waits. JupyterLab shows the kernel's
#   display name and a state in the status bar, no reason and no progress.
# * The reason is in the server's log: the provisioner writes one INFO line per
#   pending_log_interval (and whenever the reason changes), e.g.
#     Kernel 1f3c...: Slurm job 4242 PENDING (reason: Resources, expected start: 2025-03-01T10:15)
#   That log is the terminal of `jupyter lab`, the single-user server's log under JupyterHub,
#   or output.log of an Open OnDemand session. `squeue --me` shows the same to the user.
# * Default (use_pending_kernels = False): opening the notebook sends POST /api/sessions, which
#   stays open until the job runs and the kernel answers. The status bar says
#   "<display name> | Initializing". A cell run meanwhile is NOT queued: it stays "[ ]" and does
#   not run later. With the kernel manager above the waiting kernel is listed in the Running
#   panel and GET /api/kernels, and shutting it down there cancels its job.
# * With use_pending_kernels = True: the server answers at once with a kernel whose
#   execution_state is "starting" (it shows in the Running panel and in GET /api/kernels), the
#   websocket waits for the kernel, the status bar says "<display name> | Connecting", and a cell
#   run meanwhile shows "[*]" and runs as soon as the job starts. With the kernel manager above,
#   a shutdown cancels the queued job at once, an interrupt is refused at once (HTTP 409, with
#   the job and its reason), a restart is answered at once and changes nothing; without it
#   interrupt and restart fail with "Kernel is in a pending state" and a shutdown waits for the
#   start to end.
# * Either way, a start that fails (queue_timeout reached, Slurm rejected the job, the image
#   cannot run on the node) ends in JupyterLab's "Error Starting Kernel" dialog with the
#   provisioner's one-sentence message. With pending kernels the REST model also turns
#   execution_state "dead" with that message in "reason" once a client has connected.
# * get_stable_start_time() (30 s for Slurm kernels) only tells jupyter_client's restarter when
#   a started kernel counts as stable; the queue wait is over by then and it changes nothing
#   the user sees. kernel_info_timeout (60 s) starts after the kernel is up, not in the queue.
# * Any HTTP proxy between the browser and the server must let a request wait as long as the
#   queue does: nginx proxy_read_timeout (default 60 s) and Apache ProxyTimeout apply to the
#   open POST (default mode) or to the websocket handshake (pending mode). JupyterHub's
#   configurable-http-proxy sets no such timeout unless started with --timeout/--proxy-timeout.
#
# Recommended for Slurm sites:

# Cells typed while the job waits run when it starts; the kernel is visible as "starting".
c.MappingKernelManager.use_pending_kernels = True

# Give up after 15 minutes in the queue with a message that names the reason (0 waits forever).
c.SlurmProvisioner.queue_timeout = 900.0

# One INFO line per 30 s while pending (the default is 10 s).
c.SlurmProvisioner.pending_log_interval = 30.0

# --- The end of the allocation ----------------------------------------------------------------

# The next cell run prints one warning line when less than this many seconds are left before
# the job's time limit (0: never). The end is also in the kernel's environment as
# KP_SLURM_JOB_END (Unix seconds).
c.SlurmProvisioner.end_warning = 600.0

# When Slurm ends the job under a running kernel (time limit, preemption, node failure,
# scancel): "requeue" queues one new job for it (the next cell run says why the kernel is new),
# "stop" lets it die. The log says why in words either way.
c.SlurmProvisioner.on_job_end = "requeue"

# GPUs held by forgotten notebooks: shut down kernels idle for 2 hours (their Slurm job ends
# with them). Busy kernels are never culled unless cull_busy is set.
# c.MappingKernelManager.cull_idle_timeout = 7200
# c.MappingKernelManager.cull_interval = 300
