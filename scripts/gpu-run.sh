#!/usr/bin/env bash
# gpu-run.sh — run kernelprovider's GPU tests on a real NVIDIA machine that has no network.
#
#   sudo scripts/gpu-run.sh prepare          # here: fill build/gpu-carry/ (needs the network once)
#   scripts/gpu-run.sh run [OUTDIR]          # there, as root, from the repository root
#
# prepare (on the development host, after scripts/setup-testenv.sh) puts everything the GPU
# machine lacks into build/gpu-carry/ (git-ignored, kept under ~60 MB so it can travel with a
# 64 MiB working-tree copy):
#   apptainer_*.deb        Apptainer, unpacked there into a prefix (no dpkg install, no apt)
#   wheels/                kernelprovider and what the host side of the tests imports
#                          (cp312 manylinux x86_64; ipykernel itself runs inside the images)
#   images/kp-cuda.sif     python3 + ipykernel + libcudart.so.12 (12.4, from NVIDIA's
#                          nvidia-cuda-runtime-cu12 wheel) in /opt/cudart/lib; labels CUDA 12.4
#   images/kp-cuda92.sif, kp-cuda132.sif, kp-cuda-future.sif
#                          label-only images (CUDA 9.2 + TF 1.8, 13.2, 14.0) for verdicts
#   slurm/*.deb            Debian 12's Slurm 22.05 (slurmctld, slurmd, client, plugins), munge
#                          and the libraries they need that a CUDA base image may lack
#   fallback/              unsquashfs + liblzo2, used only if the machine cannot mount a SIF
# run (on the GPU machine: Ubuntu 24.04, Python 3.12, driver present, no network) installs
# Apptainer and the wheels under /opt/kp-gpu and /tmp, Slurm and munge (files the machine
# already has are never overwritten), starts a one-node Slurm cluster whose gres.conf names
# the real /dev/nvidiaN (scripts/slurm-cluster.sh with KP_SLURM_GPU_FILES), builds a PyTorch
# image from the machine's own PyTorch (a sandbox directory: its /usr and /opt/torch bound
# read-only, ipykernel from the wheels, labels from torch.version), prints the machine's
# facts, runs `pytest tests/gpu -v` and `jupyter kernelprovider doctor` for the images, and
# writes everything to OUTDIR (default: $OUT, else build/gpu-out): facts.txt, pytest.txt,
# doctor.txt, gpu-run.log, slurm-gpu-notebook.ipynb. It keeps going after a failed step so
# one call shows as much as possible.

set -uo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CARRY="$REPO_ROOT/build/gpu-carry"
# The nvidia-cuda-runtime-cu12 release whose libcudart goes into kp-cuda.sif (CUDA 12.4).
CUDART_PIN=${KP_CUDART_PIN:-12.4.127}
CUDART_CUDA=12.4
# Slurm's daemons and client, munge, and their libraries outside a CUDA base image's set.
SLURM_DEBS="slurmd slurmctld slurm-client slurm-wlm-basic-plugins munge libmunge2 libhwloc15
libjson-c5 liblua5.1-0 libyaml-0-2 libnuma1 libreadline8 libdbus-1-3 liblz4-1"

log() { printf 'gpu-run: %s\n' "$*" >&2; }
die() { printf 'gpu-run: ERROR: %s\n' "$*" >&2; exit 1; }

# =============================================================================================
# prepare (development host)

# Strip a copy of the test rootfs down to what a kernel needs: no docs, locales, apt/dpkg/perl,
# no debugger (debugpy is optional for ipykernel), no bytecode caches (xz-compressed, they would
# double the Python part; the kernel compiles what it imports, about a second per start).
strip_kernel_rootfs() {
    local r=$1 d
    d="$r/usr/lib/python3/dist-packages"
    rm -rf "$r"/usr/share/{doc,man,locale,info,lintian,bash-completion,perl5,common-licenses,zoneinfo} \
        "$r"/usr/share/python3-coverage "$r"/usr/share/gcc "$r"/var/cache/* "$r"/var/lib/apt \
        "$r"/var/log/* "$r"/usr/lib/apt "$r"/var/lib/dpkg/info \
        "$r"/usr/lib/x86_64-linux-gnu/gconv "$r"/usr/lib/x86_64-linux-gnu/perl-base \
        "$r"/usr/bin/perl* "$r"/usr/bin/openssl "$r"/usr/bin/apt* \
        "$r"/usr/lib/x86_64-linux-gnu/libapt-* "$r"/usr/lib/x86_64-linux-gnu/libgnutls* \
        "$d"/{jedi,setuptools,pkg_resources,coverage,py,_distutils_hack} \
        "$d"/distutils-precedence.pth "$d"/debugpy* "$d"/_pydevd* "$d"/_pydev_* "$d"/pydevd* "$d"/pydev_* "$d"/bytecode* \
        "$r"/usr/lib/python3.*/{lib2to3,pydoc_data,distutils,ensurepip,idlelib,tkinter,turtledemo,test}
    find "$r" -name __pycache__ -type d -prune -exec rm -rf {} +
    : >"$r/etc/resolv.conf"
}

# def file for `apptainer build`: Bootstrap localimage from a directory, labels, environment.
image_def() { # image_def ROOTFS CUDA EXTRA_LABELS ENVIRONMENT
    printf 'Bootstrap: localimage\nFrom: %s\n\n%%labels\n' "$1"
    printf '    CUDA_VERSION %s\n' "$2"
    printf '%s' "$3"
    printf '    KERNELPROVIDER_TEST 1\n'
    printf '\n%%environment\n%s' "$4"
}

build_sif() { # build_sif NAME DEF_FILE
    local out="$CARRY/images/$1.sif" logf="$WORK/$1.build.log"
    APPTAINER_TMPDIR="$WORK" apptainer -q build --force \
        --mksquashfs-args "-comp xz -Xdict-size 100% -b 1M" "$out" "$2" >"$logf" 2>&1 ||
        { tail -n 30 "$logf" >&2; die "apptainer build $1 failed (log: $logf)"; }
    chmod 644 "$out"
    log "image: $1.sif $(du -h "$out" | cut -f1)"
}

prepare() {
    [ "$(id -u)" -eq 0 ] || die "prepare needs root (apptainer build of a root-owned rootfs)"
    command -v apptainer >/dev/null || die "no apptainer here: run scripts/setup-testenv.sh first"
    local py="$REPO_ROOT/build/venv/bin/python" deb stage_tar root tiny whl
    [ -x "$py" ] || die "no build/venv: run 'make venv' first"
    WORK=$(mktemp -d /tmp/kp-gpu-prepare.XXXXXX)
    trap 'rm -rf "$WORK"' EXIT
    rm -rf "$CARRY"
    mkdir -p "$CARRY/wheels" "$CARRY/images" "$CARRY/fallback"

    # Apptainer: the .deb setup-testenv.sh cached (Debian's; it needs glibc >= 2.38, which
    # Ubuntu 24.04's 2.39 meets, so no private glibc travels).
    deb=$(find "$REPO_ROOT/build/cache/debs" -maxdepth 1 -name 'apptainer_*_amd64.deb' | sort -V | tail -n1)
    [ -n "$deb" ] || die "no apptainer .deb in build/cache/debs: run scripts/setup-testenv.sh first"
    cp "$deb" "$CARRY/"

    # Wheels for the host side (cp312, manylinux x86_64), dependencies resolved here so the
    # machine can install them all with --no-deps; the project itself as a wheel.
    "$py" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 -d "$CARRY/wheels" \
        jupyter_client traitlets tornado pyzmq pytest pytest-asyncio pytest-timeout psutil \
        jupyter_server nbclient nbformat ipykernel ||
        die "pip download failed"
    # Optional for ipykernel/IPython (the debugger, completion), and 10 MB the carry lacks.
    rm -f "$CARRY"/wheels/debugpy-*.whl "$CARRY"/wheels/jedi-*.whl "$CARRY"/wheels/parso-*.whl
    "$py" -m pip wheel -q --no-deps -w "$CARRY/wheels" "$REPO_ROOT" ||
        die "building the kernelprovider wheel failed"

    # Slurm and munge for the GPU machine: Debian 12's, built against glibc 2.36, which
    # Ubuntu 24.04's 2.39 runs. The packages this host's apt knows, fetched without touching
    # its state (apt-get download into the carry).
    mkdir -p "$CARRY/slurm"
    (cd "$CARRY/slurm" && apt-get -q -o APT::Sandbox::User=root download $SLURM_DEBS) >/dev/null ||
        die "apt-get download of the Slurm packages failed (run apt-get update first?)"

    # libcudart.so.12 from NVIDIA's wheel (not carried itself: only the library goes in).
    mkdir -p "$WORK/cudart"
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 -d "$WORK/cudart" "nvidia-cuda-runtime-cu12==$CUDART_PIN" ||
        die "pip download nvidia-cuda-runtime-cu12==$CUDART_PIN failed"
    whl=$(find "$WORK/cudart" -name 'nvidia_cuda_runtime_cu12-*.whl' | head -n1)

    # kp-cuda.sif: the ipykernel stage of setup-testenv.sh, stripped, plus libcudart.
    stage_tar=$(find "$REPO_ROOT/build/cache" -maxdepth 1 -name 'rootfs-*-ipykernel-*.tar' -printf '%T@ %p\n' | sort -n | tail -n1 | cut -d' ' -f2-)
    [ -n "$stage_tar" ] || die "no ipykernel rootfs stage in build/cache: run scripts/setup-testenv.sh first"
    root="$WORK/kp-cuda"
    mkdir -p "$root"
    tar -C "$root" --numeric-owner -xpf "$stage_tar"
    strip_kernel_rootfs "$root"
    mkdir -p "$root/opt/cudart/lib"
    "$py" - "$whl" "$root/opt/cudart/lib" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    data = z.read("nvidia/cuda_runtime/lib/libcudart.so.12")
with open(sys.argv[2] + "/libcudart.so.12", "wb") as f:
    f.write(data)
PY
    chmod 755 "$root/opt/cudart/lib/libcudart.so.12"
    # Both ways a real image finds its runtime: the loader cache and LD_LIBRARY_PATH (the
    # provisioner must keep the driver's directory in front of the latter).
    echo /opt/cudart/lib >"$root/etc/ld.so.conf.d/cudart.conf"
    chroot "$root" /sbin/ldconfig
    image_def "$root" "$CUDART_CUDA" \
        "    org.opencontainers.image.title kernelprovider GPU test image (CUDA runtime $CUDART_PIN)
    CUDART_WHEEL nvidia-cuda-runtime-cu12==$CUDART_PIN
" "    export LD_LIBRARY_PATH=/opt/cudart/lib
    export KP_TEST_IMAGE=kp-cuda
" >"$WORK/kp-cuda.def"
    build_sif kp-cuda "$WORK/kp-cuda.def"

    # Label-only images: what doctor and the launch-time verdicts read, nothing to run.
    tiny="$WORK/tiny"
    mkdir -p "$tiny"/{bin,etc,tmp,dev,proc,sys}
    image_def "$tiny" 9.2 "    TENSORFLOW_VERSION 1.8
    CUDNN_VERSION 7.1
" "" >"$WORK/kp-cuda92.def"
    build_sif kp-cuda92 "$WORK/kp-cuda92.def"
    image_def "$tiny" 13.2 "    CUDNN_VERSION 9.10
    TENSORFLOW_VERSION 2.20
" "" >"$WORK/kp-cuda132.def"
    build_sif kp-cuda132 "$WORK/kp-cuda132.def"
    image_def "$tiny" 14.0 "    CUDNN_VERSION 10.0
    TENSORFLOW_VERSION 2.20
" "" >"$WORK/kp-cuda-future.def"
    build_sif kp-cuda-future "$WORK/kp-cuda-future.def"

    # If the GPU machine cannot mount a SIF (no loop devices or squashfs in its kernel), run
    # unpacks the images into sandbox directories with this unsquashfs (Debian 12's, >= 4.5
    # for -offset); liblzo2 is the one library of it Ubuntu's base image may lack.
    cp -L "$(command -v unsquashfs)" "$CARRY/fallback/"
    cp -L /lib/x86_64-linux-gnu/liblzo2.so.2 "$CARRY/fallback/"
    # Apptainer's two shared libraries besides glibc, in case the machine lacks them.
    mkdir -p "$CARRY/fallback/lib"
    cp -L /usr/lib/x86_64-linux-gnu/libseccomp.so.2 /usr/lib/x86_64-linux-gnu/libsqlite3.so.0 \
        "$CARRY/fallback/lib/"

    (cd "$CARRY" && find . -type f -printf '%s\t%p\n' | sort -k2 >MANIFEST.tsv)
    log "carry: $(du -sh "$CARRY" | cut -f1) in $CARRY"
    local total
    total=$(du -sb "$CARRY" | cut -f1)
    # The device tool moves 64 MiB per call, the working tree included.
    [ "$total" -lt $((62 * 1024 * 1024)) ] || die "build/gpu-carry is $total bytes, over 62 MiB"
}

# =============================================================================================
# run (GPU machine)

PREFIX=${KP_GPU_PREFIX:-/opt/kp-gpu/apptainer}
LINK=${KP_GPU_LINK:-/usr/local/bin/apptainer}
SITE=${KP_GPU_SITE:-/tmp/kp-gpu-site}

section() { printf '\n===== %s =====\n' "$*"; }

facts() {
    section "machine"
    date -u +%Y-%m-%dT%H:%M:%SZ
    uname -a
    # shellcheck disable=SC1091
    (. /etc/os-release && echo "$PRETTY_NAME")
    ldd --version 2>&1 | head -n1
    echo "python: $PY ($("$PY" --version 2>&1))"
    section "driver"
    cat /proc/driver/nvidia/version 2>&1
    nvidia-smi --query-gpu=index,name,uuid,compute_cap,driver_version,memory.total --format=csv 2>&1
    section "devices and filesystems"
    ls -l /dev/nvidia* 2>&1
    ls /dev/loop-control /dev/loop0 2>&1
    grep -E 'squashfs|overlay|fuse' /proc/filesystems 2>&1
    section "cgroups"
    findmnt /sys/fs/cgroup 2>&1 | tail -n 1
    cat /sys/fs/cgroup/cgroup.controllers /proc/self/cgroup 2>&1
    section "driver libraries in the loader cache"
    ldconfig -p | grep -E 'libcuda\.so|libnvidia-ml\.so|libnvidia-ptxjitcompiler' 2>&1
}

# --nv finds the driver's libraries through `ldconfig -p` and its programs through PATH.
ensure_driver_visible() {
    local d
    for d in /usr/local/nvidia/bin /usr/local/cuda/bin; do
        [ -d "$d" ] && case ":$PATH:" in *":$d:"*) ;; *) PATH="$PATH:$d" ;; esac
    done
    export PATH
    if ldconfig -p | grep -q 'libcuda\.so\.1 '; then return 0; fi
    for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib64/nvidia \
        $(printf '%s' "${LD_LIBRARY_PATH:-}" | tr ':' ' '); do
        if [ -e "$d/libcuda.so.1" ]; then
            log "libcuda.so.1 is in $d but not in the loader cache: adding $d to it"
            echo "$d" >/etc/ld.so.conf.d/zz-kp-gpu-nvidia.conf
            ldconfig
            return 0
        fi
    done
    log "no libcuda.so.1 found on this machine"
}

install_apptainer() {
    local deb x conf
    deb=$(find "$CARRY" -maxdepth 1 -name 'apptainer_*.deb' | sort -V | tail -n1)
    [ -n "$deb" ] || { log "no apptainer .deb in $CARRY"; return 1; }
    x=$(mktemp -d /tmp/kp-apptainer.XXXXXX)
    dpkg-deb -x "$deb" "$x" || return 1
    rm -rf "$PREFIX"
    mkdir -p "$PREFIX/usr/etc" "$PREFIX/usr/var"
    # Apptainer finds its config relative to its binary (<prefix>/usr/etc/apptainer); its
    # starter derives the prefix from the multiarch libexec dir, hence usr/lib/{etc,var}.
    cp -a "$x/usr/." "$PREFIX/usr/"
    cp -a "$x/etc/." "$PREFIX/usr/etc/"
    [ ! -d "$x/var" ] || cp -a "$x/var/." "$PREFIX/usr/var/"
    mkdir -p "$PREFIX/usr/var/lib/apptainer/mnt/session"
    ln -sfn ../etc "$PREFIX/usr/lib/etc"
    ln -sfn ../var "$PREFIX/usr/lib/var"
    rm -rf "$x"
    conf="$PREFIX/usr/etc/apptainer/apptainer.conf"
    # Root in a VM or container may lack capabilities the default "full" set asks for.
    if grep -qE '^[[:space:]]*#?[[:space:]]*root default capabilities' "$conf"; then
        sed -i -E 's/^[[:space:]]*#?[[:space:]]*root default capabilities[[:space:]]*=.*/root default capabilities = file/' "$conf"
    else
        echo 'root default capabilities = file' >>"$conf"
    fi
    ln -sfn "$PREFIX/usr/bin/apptainer" "$LINK"
    if ldd "$PREFIX/usr/bin/apptainer" | grep -q 'not found'; then
        log "apptainer lacks libraries here; adding the carried ones to the loader cache:"
        ldd "$PREFIX/usr/bin/apptainer" | grep 'not found' >&2
        echo "$CARRY/fallback/lib" >/etc/ld.so.conf.d/zz-kp-gpu-fallback.conf
        ldconfig
    fi
    apptainer version
}

install_wheels() {
    local venv="$SITE-venv" purelib
    rm -rf "$SITE" "$venv"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
        "$CARRY"/wheels/*.whl || return 1
    # No PYTHONPATH: apptainer hands the server's environment to the container, where the
    # image's own Python would import these cp312 modules (pyzmq: "undefined symbol"). A venv
    # whose .pth names the checkout (the code under test) and $SITE (the wheels, and the
    # entry points of kernelprovider's dist-info) gives the host side its packages instead.
    "$PY" -m venv --without-pip "$venv" || return 1
    purelib=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    printf '%s\n%s\n' "$REPO_ROOT" "$SITE" >"$purelib/kp-gpu.pth"
    sed -i "1s|^#!.*python.*\$|#!$venv/bin/python|" "$SITE"/bin/*
    export PATH="$SITE/bin:$PATH"
    PY="$venv/bin/python"
    "$PY" -c 'import kernelprovider, jupyter_client, zmq; print("kernelprovider", kernelprovider.__version__, kernelprovider.__file__, "jupyter_client", jupyter_client.__version__, "pyzmq", zmq.__version__)'
}

# Slurm and munge from the carried .debs. Unpacked, never dpkg-installed; merged into / without
# overwriting a single file the machine has (its own libraries stay its own).
install_slurm() {
    local x deb d f
    case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin:/sbin" ;; esac
    export PATH
    if command -v slurmd >/dev/null && command -v munged >/dev/null; then
        log "slurm: already installed ($(slurmd -V 2>&1))"
        return 0
    fi
    ls -ld /usr /usr/sbin /sbin /lib /bin 2>&1
    findmnt -T /usr 2>&1 | tail -n 1
    x=$(mktemp -d /tmp/kp-slurm.XXXXXX)
    for deb in "$CARRY"/slurm/*.deb; do
        dpkg-deb -x "$deb" "$x" || { log "dpkg-deb -x $deb failed"; return 1; }
    done
    # Debian 12 packages may still ship /lib, /bin, /sbin paths; Ubuntu's are links into /usr.
    for d in lib bin sbin; do
        if [ -d "$x/$d" ] && [ ! -L "$x/$d" ]; then
            mkdir -p "$x/usr/$d"
            cp -a "$x/$d/." "$x/usr/$d/"
            rm -rf "${x:?}/$d"
        fi
    done
    # Files already here win (--skip-old-files); directories that are links here (/lib,
    # /usr/sbin on some images) stay links (--keep-directory-symlink).
    tar -C "$x" -cf - . | tar -C / --keep-directory-symlink --skip-old-files -xf - ||
        log "slurm: unpacking into / reported errors (above)"
    rm -rf "$x"
    # Debian names the daemons *-wlm and links them through update-alternatives in postinst,
    # which never runs here.
    for f in slurmd slurmctld slurmstepd; do
        [ -e "/usr/sbin/$f" ] || ln -s "$f-wlm" "/usr/sbin/$f"
    done
    ldconfig
    id munge >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin munge
    for f in /usr/sbin/slurmd /usr/sbin/slurmctld /usr/sbin/slurmstepd /usr/bin/sbatch \
        /usr/sbin/munged; do
        [ -e "$f" ] || { log "slurm: $f missing after unpacking"; return 1; }
        if ldd "$f" | grep -q 'not found'; then
            log "slurm: $f lacks libraries:"
            ldd "$f" | grep 'not found' >&2
            return 1
        fi
    done
    log "slurm: installed $(slurmd -V 2>&1), $(munged -V 2>&1 | head -n1)"
}

start_slurm() {
    local files
    files=$(ls /dev/nvidia[0-9]* 2>/dev/null | sort -V | tr '\n' ' ')
    [ -n "$files" ] || { log "no /dev/nvidiaN device files: no GPU for Slurm"; return 1; }
    # One node, this machine; the real device files in gres.conf. Exported: the tests' own
    # cluster fixture runs the same script and must find the same config.
    export KP_SLURM_NODES=1 KP_SLURM_GPU_FILES="${files% }" KP_SLURM_CPUS=16
    bash "$REPO_ROOT/scripts/slurm-cluster.sh" start || return 1
    cat /etc/slurm/gres.conf
    scontrol show node | grep -E 'NodeName|Gres|CfgTRES|State'
    sinfo
}

# The PyTorch image: a sandbox directory holding this machine's own /usr (without /usr/local:
# --nv brings the driver, PyTorch its own CUDA libraries) and /opt/torch/.venv as hard links
# where the filesystem allows (a copy elsewhere: Apptainer does not follow mounts inside a
# sandbox), /etc a copy, /.singularity.d taken from kp-cuda.sif with its own labels and
# environment, and ipykernel (not in the machine's PyTorch venv) from the carried wheels.
# Its CUDA_VERSION label is what torch.version.cuda says.
TORCH_IMAGE=/opt/kp-gpu/images/kp-torch
link_tree() { # link_tree SRC DEST_PARENT: hard links where possible, copies for the rest
    cp -al "$1" "$2/" 2>/dev/null || cp -an "$1" "$2/" 2>&1 | head -n 5
}
build_torch_image() {
    local t=$TORCH_IMAGE torch_py=/opt/torch/.venv/bin/python3 cuda version title d start
    [ -x "$torch_py" ] || { log "no PyTorch at /opt/torch/.venv: no framework image"; return 1; }
    start=$SECONDS
    echo "python: $(readlink -f "$torch_py"); $(tr '\n' ' ' </opt/torch/.venv/pyvenv.cfg)"
    rm -rf "$t"
    mkdir -p "$t"/{usr,opt/torch,opt/kp-site,dev,proc,sys,tmp,root,home,run,mnt,var/tmp,srv}
    for d in bin lib lib64 sbin; do ln -s "usr/$d" "$t/$d"; done
    for d in /usr/*; do
        [ "$d" = /usr/local ] || link_tree "$d" "$t/usr"
    done
    mkdir -p "$t/usr/local"
    link_tree /opt/torch/.venv "$t/opt/torch"
    cp -a /etc "$t/etc"
    cp -a "$SITE/." "$t/opt/kp-site/"
    apptainer exec "$KP_GPU_IMAGES/kp-cuda.sif" tar -C / -cf - .singularity.d | tar -C "$t" -xf - ||
        { log "could not copy /.singularity.d out of kp-cuda.sif"; return 1; }
    log "PyTorch image: $t made in $((SECONDS - start)) s ($(df -h --output=source,fstype "$t" /usr /opt/torch | tr '\n' ' '))"
    cuda=$("$torch_py" -c 'import torch; print(torch.version.cuda)')
    version=$("$torch_py" -c 'import torch; print(torch.__version__.split("+")[0])')
    title="PyTorch $version / CUDA $cuda (the GPU machine's own, as a sandbox)"
    "$torch_py" - "$t/.singularity.d/labels.json" "$cuda" "$version" "$title" <<'PY'
import json, sys
path, cuda, version, title = sys.argv[1:]
with open(path, "w") as f:
    json.dump({"CUDA_VERSION": cuda, "PYTORCH_VERSION": version,
               "org.opencontainers.image.title": title, "KERNELPROVIDER_TEST": "1"}, f, indent=2)
PY
    printf '%s\n' '#!/bin/sh' 'export PATH="/opt/torch/.venv/bin:$PATH"' \
        'export PYTHONPATH=/opt/kp-site' 'export KP_TEST_IMAGE=kp-torch' \
        >"$t/.singularity.d/env/90-environment.sh"
    chmod 755 "$t/.singularity.d/env/90-environment.sh"
    apptainer exec --nv "$t" python3 -c '
import torch, ipykernel
print("torch", torch.__version__, "cuda", torch.version.cuda, "ipykernel", ipykernel.__version__,
      "gpu", torch.cuda.is_available() and torch.cuda.get_device_name(0))' || return 1
    export KP_GPU_TORCH_IMAGE=$t
}

# Offset of the squashfs partition in a SIF, from `apptainer sif list`.
sif_offset() {
    apptainer sif list "$1" 2>/dev/null | awk -F'|' '/Squashfs/ { split($4, p, "-"); gsub(/ /, "", p[1]); print p[1]; exit }'
}

ensure_images_run() {
    local img name off dir
    KP_GPU_IMAGES="$CARRY/images"
    if apptainer exec "$KP_GPU_IMAGES/kp-cuda.sif" true; then
        log "apptainer exec of a SIF works"
        export KP_GPU_IMAGES
        return 0
    fi
    log "apptainer cannot run a SIF here; unpacking the images into sandbox directories"
    dir=/tmp/kp-gpu-sandboxes
    rm -rf "$dir" && mkdir -p "$dir"
    for img in "$CARRY"/images/*.sif; do
        name=$(basename "$img")
        off=$(sif_offset "$img")
        [ -n "$off" ] || { log "no squashfs partition found in $img"; continue; }
        # A directory named like the image: check_image tells sandboxes by being a directory.
        LD_LIBRARY_PATH="$CARRY/fallback" "$CARRY/fallback/unsquashfs" -q -n -o "$off" \
            -d "$dir/$name" "$img" >/dev/null || log "unsquashfs of $img failed"
    done
    KP_GPU_IMAGES=$dir
    export KP_GPU_IMAGES
    apptainer exec "$KP_GPU_IMAGES/kp-cuda.sif" true && log "sandboxes run"
}

smoke() {
    section "smoke: apptainer exec --nv kp-cuda.sif"
    apptainer exec --nv "$KP_GPU_IMAGES/kp-cuda.sif" python3 -c '
import ctypes, os
print("LD_LIBRARY_PATH", os.environ.get("LD_LIBRARY_PATH"))
cuda = ctypes.CDLL("libcuda.so.1")
print("cuInit", cuda.cuInit(0))
n = ctypes.c_int(); print("cuDeviceGetCount", cuda.cuDeviceGetCount(ctypes.byref(n)), n.value)
' 2>&1
}

run_doctor() {
    local img j=/tmp/kp-gpu-jupyter
    # Kernelspecs of the images in a private Jupyter path, so `list` and `doctor` without
    # arguments show them and nothing else.
    rm -rf "$j"
    export JUPYTER_PATH="$j/share/jupyter" JUPYTER_DATA_DIR="$j/data" JUPYTER_CONFIG_DIR="$j/config"
    section "jupyter kernelprovider install (4 kernelspecs) + list"
    jupyter kernelprovider install --prefix "$j" --image "$KP_GPU_IMAGES/kp-cuda.sif" \
        --name cuda124 --display-name "CUDA 12.4 (GPU)"
    jupyter kernelprovider install --prefix "$j" --image "$KP_GPU_IMAGES/kp-cuda.sif" \
        --name cuda124-cpu --display-name "CUDA 12.4 (CPU only)" --no-gpu
    jupyter kernelprovider install --prefix "$j" --image "$KP_GPU_IMAGES/kp-cuda92.sif" \
        --name tf18-cuda92 --display-name "TF 1.8 / CUDA 9.2 (GPU)"
    jupyter kernelprovider install --prefix "$j" --image "$KP_GPU_IMAGES/kp-cuda132.sif" \
        --name cuda132 --display-name "CUDA 13.2 (GPU)"
    jupyter kernelprovider list 2>&1
    echo "[exit $?]"
    jupyter kernelprovider list --json 2>&1 | grep -E '"(name|verdict|verdict_reason)"'
    section "jupyter kernelprovider doctor (no arguments)"
    jupyter kernelprovider doctor 2>&1
    echo "[exit $?]"
    section "jupyter kernelprovider doctor cuda124"
    jupyter kernelprovider doctor cuda124 2>&1
    echo "[exit $?]"
    for img in kp-cuda92.sif kp-cuda.sif kp-cuda132.sif; do
        section "jupyter kernelprovider doctor $img"
        jupyter kernelprovider doctor "$KP_GPU_IMAGES/$img" 2>&1
        echo "[exit $?]"
    done
    if [ -n "${KP_GPU_TORCH_IMAGE:-}" ]; then
        section "jupyter kernelprovider doctor kp-torch (the PyTorch image)"
        jupyter kernelprovider doctor "$KP_GPU_TORCH_IMAGE" 2>&1
        echo "[exit $?]"
        "$KP_GPU_TORCH_IMAGE/opt/torch/.venv/bin/python3" -c 'import torch; print("torch says:", torch.__version__, torch.version.cuda, torch.cuda.get_arch_list())' 2>&1
        jupyter kernelprovider doctor --json "$KP_GPU_TORCH_IMAGE" >"$OUTDIR/doctor-torch.json" 2>&1
    fi
    section "jupyter kernelprovider doctor kp-cuda92.sif --driver-version 390.46"
    jupyter kernelprovider doctor "$KP_GPU_IMAGES/kp-cuda92.sif" --driver-version 390.46 2>&1
    echo "[exit $?]"
}

run() {
    OUTDIR=${1:-${OUT:-$REPO_ROOT/build/gpu-out}}
    mkdir -p "$OUTDIR"
    [ -d "$CARRY" ] || die "no $CARRY: run 'scripts/gpu-run.sh prepare' on the development host"
    PY=${KP_GPU_PYTHON:-$(command -v python3)}
    [ -x /opt/torch/.venv/bin/python ] && PY=${KP_GPU_PYTHON:-/opt/torch/.venv/bin/python}
    export PYTHONUNBUFFERED=1
    cd "$REPO_ROOT" || die "cannot cd to $REPO_ROOT"
    {
        facts
        ensure_driver_visible
        section "install"
        install_apptainer || log "apptainer install failed"
        install_wheels || log "wheel install failed"
        ensure_images_run
        smoke
        section "slurm"
        install_slurm && start_slurm || log "Slurm could not be started: the Slurm GPU tests fail"
        section "PyTorch image"
        build_torch_image || log "no PyTorch image: the framework tests fail"
    } >"$OUTDIR/facts.txt" 2>&1
    cat "$OUTDIR/facts.txt"
    run_doctor 2>&1 | tee "$OUTDIR/doctor.txt"
    section "pytest tests/gpu -v"
    # Only the plugins the tests use: the machine's Python has others (benchmark, xdist, cov)
    # built for another pytest. A clean Jupyter path per test comes from tests/conftest.py.
    # The outer timeout keeps a hung kernel from eating a device call's whole time limit.
    export KP_GPU_REQUIRE_SLURM=1 KP_GPU_OUT="$OUTDIR"
    PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout -k 10 "${KP_GPU_PYTEST_TIMEOUT:-480}" \
        "$PY" -m pytest tests/gpu -v -rsP -p no:cacheprovider -p pytest_asyncio.plugin \
        -p pytest_timeout 2>&1 | tee "$OUTDIR/pytest.txt"
}

case "${1:-}" in
    prepare) prepare ;;
    run) shift; run "$@" 2>&1 | tee "${OUT:-/tmp}/gpu-run.log" ;;
    *) die "usage: $0 prepare | run [OUTDIR]" ;;
esac
