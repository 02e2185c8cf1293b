#!/usr/bin/env bash
# setup-testenv.sh — prepare a Debian 12/13 machine for kernelprovider's integration tests.
#
#   sudo scripts/setup-testenv.sh
#
# 1. Installs a real Apptainer (from Debian unstable, relocated into a private prefix with its
#    own glibc when the host's is too old) unless `apptainer` is already on PATH, and links it
#    to /usr/local/bin/apptainer.
# 2. Builds the test images into build/images/ (only those that are missing or outdated).
#    kp-frameworks.sif carries genuine framework files taken from published wheels (JAX's CUDA
#    12 plugin with its .nv_fatbin GPU code, NVIDIA's CUDA runtime wheel), downloaded once with
#    the host's own pip configuration into build/cache/wheels.
# 3. Prints what it has.
#
# Idempotent: a second run rebuilds nothing and needs no network. Everything cached lives under
# the repository's git-ignored build/ folder; the Apptainer install lives outside the repository
# (KP_APPTAINER_PREFIX, default /opt/kernelprovider/apptainer) so it survives a fresh clone.
# DEVELOPERS.md describes the details.
#
# Environment knobs (all optional):
#   KP_APPTAINER_PREFIX   install prefix                (default /opt/kernelprovider/apptainer)
#   KP_APPTAINER_LINK     symlink put on PATH           (default /usr/local/bin/apptainer)
#   KP_FORCE_APPTAINER=1  install into the prefix even if some apptainer is already on PATH
#   KP_DEBIAN_MIRROR      Debian mirror URI             (default: from the host's apt sources)
#   KP_TEST_SUITE         suite of the test images      (default: the host's VERSION_CODENAME)
#   KP_SQUASHFS_COMP      mksquashfs compressor         (default gzip; xz is ~30% smaller but
#                         adds ~1.4 s to every `import ipykernel` in the container)
#   KP_BENCH_IMAGES=1     also build kp-scipy.sif: ipykernel + Debian's numpy, scipy and pandas
#                         (a large image for bench/bench_start.py; the tests do not need it)

set -Eeuo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$REPO_ROOT/build"
CACHE="$BUILD/cache"
ROOTFS="$BUILD/rootfs"
IMAGES="$BUILD/images"
STAMPS="$BUILD/stamps"
WORK="$BUILD/tmp"

PREFIX=${KP_APPTAINER_PREFIX:-/opt/kernelprovider/apptainer}
LINK=${KP_APPTAINER_LINK:-/usr/local/bin/apptainer}
COMP=${KP_SQUASHFS_COMP:-gzip}
# Bump to force every image to be rebuilt even though no recipe function changed.
RECIPE_VERSION=1
# Bump when install_apptainer changes what it lays out in $PREFIX: forces a reinstall (offline,
# from the cached .debs).
INSTALL_LAYOUT=2

HOST_PACKAGES=(debootstrap squashfs-tools squashfuse fuse3 uidmap patchelf ca-certificates
    debian-archive-keyring libseccomp2 libsqlite3-0 e2fsprogs)

T0=$(date +%s)
log() { printf 'testenv: %s\n' "$*" >&2; }
die() { printf 'testenv: ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Cleanup: unmount whatever we mounted, even on failure.
MOUNTS=()
cleanup() {
    local m
    for m in "${MOUNTS[@]}"; do
        if mountpoint -q "$m"; then umount "$m" 2>/dev/null || umount -l "$m" || true; fi
    done
}
trap cleanup EXIT
trap 'printf "testenv: ERROR: command failed (exit %s) at line %s: %s\n" "$?" "$LINENO" "$BASH_COMMAND" >&2' ERR

# rm -rf that never crosses into a mounted filesystem (e.g. a /proc bound into a rootfs).
safe_rm() {
    local p
    for p in "$@"; do
        [ -e "$p" ] || [ -L "$p" ] || continue
        if grep -qF " $p/" /proc/self/mountinfo; then die "refusing to remove $p: something is mounted below it"; fi
        rm -rf --one-file-system "$p"
    done
}

# ---------------------------------------------------------------------------------------------
# Host facts
[ "$(id -u)" -eq 0 ] || die "run me as root (apt-get, debootstrap, chroot and apptainer build need it)"
[ -r /etc/os-release ] || die "/etc/os-release missing: this script is for Debian 12/13"
# shellcheck disable=SC1091
HOST_CODENAME=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
# shellcheck disable=SC1091
HOST_ID=$(. /etc/os-release && echo "${ID:-}")
[ "$HOST_ID" = debian ] || log "warning: host is '$HOST_ID', not debian; carrying on"
[ -n "$HOST_CODENAME" ] || die "no VERSION_CODENAME in /etc/os-release"
SUITE=${KP_TEST_SUITE:-$HOST_CODENAME}
ARCH=$(dpkg --print-architecture)
case "$ARCH" in
    amd64) TRIPLET=x86_64-linux-gnu;  LDSO=ld-linux-x86-64.so.2 ;;
    arm64) TRIPLET=aarch64-linux-gnu; LDSO=ld-linux-aarch64.so.1 ;;
    *) die "unsupported architecture $ARCH (amd64 and arm64 only)" ;;
esac

# The first URI that serves the host's own suite, from deb822 .sources files or one-line lists.
host_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri=$(awk -v suite="$HOST_CODENAME" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; suites = ""; uris = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    split(line, kv, ":")
                    key = tolower(kv[1]); sub(/^[ \t]+/, "", key)
                    val = substr(line, index(line, ":") + 1)
                    if (key == "types") types = " " val " "
                    else if (key == "suites") suites = " " val " "
                    else if (key == "uris") uris = val
                    else if (key == "enabled") { enabled = val; gsub(/[ \t]/, "", enabled) }
                }
                gsub(/[ \t]+/, " ", types); gsub(/[ \t]+/, " ", suites)
                if (enabled != "no" && types ~ / deb / && suites ~ (" " suite " ")) {
                    split(uris, u, /[ \t]+/)
                    for (j in u) if (u[j] != "") { print u[j]; exit }
                }
            }' "$f")
        if [ -n "$uri" ]; then echo "${uri%/}"; return 0; fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        uri=$(awk -v suite="$HOST_CODENAME" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f")
        if [ -n "$uri" ]; then echo "${uri%/}"; return 0; fi
    done
    return 1
}

MIRROR=${KP_DEBIAN_MIRROR:-$(host_mirror || true)}
MIRROR=${MIRROR%/}
[ -n "$MIRROR" ] || die "found no apt source for suite '$HOST_CODENAME'; set KP_DEBIAN_MIRROR=<debian mirror URI>"

# Host apt settings that the chroots' apt must share: a proxy, and Check-Valid-Until (mirrors
# that serve a frozen snapshot need it off; the private unstable apt inherits it from the host).
apt_conf() { apt-config dump "$1" 2>/dev/null | sed -n "s/^$1 \"\(.*\)\";\$/\1/p" | head -n1; }
APT_PROXY=$(apt_conf Acquire::http::Proxy)
APT_CHECK_VALID=$(apt_conf Acquire::Check-Valid-Until)
if [ -n "$APT_PROXY" ] && [ -z "${http_proxy:-}" ]; then export http_proxy="$APT_PROXY"; fi

mkdir -p "$CACHE" "$ROOTFS" "$IMAGES" "$STAMPS" "$WORK"
chmod 755 "$IMAGES"

# One run at a time.
exec 9>"$BUILD/.setup-testenv.lock"
flock -n 9 || { log "another setup-testenv.sh is running; waiting for it"; flock 9; }

log "repo $REPO_ROOT; host $HOST_ID $HOST_CODENAME/$ARCH; image suite $SUITE; mirror $MIRROR"

# ---------------------------------------------------------------------------------------------
# 0. Host packages from the stable suite.
ensure_host_packages() {
    local missing=() p
    for p in "${HOST_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then log "host packages: all present"; return 0; fi
    log "host packages: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# ---------------------------------------------------------------------------------------------
# 1. Apptainer

INFO="$PREFIX/kp-install.info"

# Our prefix counts as installed when its info file exists and the binary runs.
prefix_ok() {
    [ -f "$INFO" ] && grep -qx "layout=$INSTALL_LAYOUT" "$INFO" && [ -x "$PREFIX/usr/bin/apptainer" ] && "$PREFIX/usr/bin/apptainer" version >/dev/null 2>&1
}

# apt-get against a private state dir holding only Debian unstable; the system's apt state,
# lists and caches are not touched.
UNST="$CACHE/apt-unstable"
unstable_apt() {
    apt-get -q \
        -o Dir::Etc::sourcelist="$UNST/sources.list" -o Dir::Etc::sourceparts="$UNST/empty" \
        -o Dir::Etc::preferences="$UNST/preferences" -o Dir::Etc::preferencesparts="$UNST/empty" \
        -o Dir::State::Lists="$UNST/lists" -o Dir::Cache="$UNST/cache" \
        -o Dir::Cache::archives="$UNST/archives" -o Debug::NoLocking=1 \
        -o APT::Sandbox::User=root -o Acquire::Languages=none "$@"
}
UNST_UPDATED=0
unstable_update() {
    [ "$UNST_UPDATED" = 1 ] && return 0
    mkdir -p "$UNST/lists/partial" "$UNST/cache" "$UNST/archives/partial" "$UNST/empty" "$CACHE/debs"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR unstable main" >"$UNST/sources.list"
    : >"$UNST/preferences"
    log "apptainer: reading the package index of Debian unstable"
    unstable_apt update >/dev/null
    UNST_UPDATED=1
}

# Newest cached .deb of a package (into $DEB), downloading the current unstable one if none is
# cached. Not meant for $(...): unstable_update must run once per script run, not per subshell.
cached_deb() {
    local pkg=$1 deb
    mkdir -p "$CACHE/debs"
    deb=$(find "$CACHE/debs" -maxdepth 1 -name "${pkg}_*_${ARCH}.deb" | sort -V | tail -n1)
    if [ -z "$deb" ]; then
        unstable_update
        log "apptainer: downloading $pkg from unstable"
        (cd "$CACHE/debs" && unstable_apt download "$pkg" >/dev/null)
        deb=$(find "$CACHE/debs" -maxdepth 1 -name "${pkg}_*_${ARCH}.deb" | sort -V | tail -n1)
        [ -n "$deb" ] || die "apt-get download $pkg left no .deb in $CACHE/debs"
    fi
    DEB=$deb
}

install_apptainer() {
    local app_deb libc_deb="" need host_libc x stage conf L b
    cached_deb apptainer
    app_deb=$DEB
    need=$(dpkg-deb -f "$app_deb" Depends | tr ',' '\n' | sed -n 's/^ *libc6 *(>= *\([^)]*\)).*/\1/p' | head -n1)
    host_libc=$(dpkg-query -W -f='${Version}' libc6)
    if [ -n "$need" ] && dpkg --compare-versions "$host_libc" lt "$need"; then
        log "apptainer: host glibc $host_libc < $need required: bundling a private glibc"
        cached_deb libc6
        libc_deb=$DEB
        dpkg --compare-versions "$(dpkg-deb -f "$libc_deb" Version)" ge "$need" ||
            die "cached $libc_deb is older than $need; delete $CACHE/debs and rerun"
    else
        log "apptainer: host glibc $host_libc is new enough (needs ${need:-any})"
    fi

    x=$(mktemp -d "$WORK/extract.XXXXXX")
    stage="$PREFIX.new"
    safe_rm "$stage"
    dpkg-deb -x "$app_deb" "$x"
    [ -z "$libc_deb" ] || dpkg-deb -x "$libc_deb" "$x"
    # Apptainer finds its config and state relative to its binary (see `apptainer buildcfg`):
    # <prefix>/usr/etc/apptainer and <prefix>/usr/var/lib/apptainer.
    mkdir -p "$stage/usr/etc" "$stage/usr/var"
    cp -a "$x/usr/." "$stage/usr/"
    cp -a "$x/etc/." "$stage/usr/etc/"
    [ ! -d "$x/var" ] || cp -a "$x/var/." "$stage/usr/var/"
    mkdir -p "$stage/usr/var/lib/apptainer/mnt/session" "$stage/usr/var/lib/apptainer/mnt/source"
    # The starter derives its own prefix as the parent of LIBEXECDIR, which on Debian is the
    # multiarch /usr/lib/<triplet>: relocated, it looks for <prefix>/usr/lib/etc/apptainer and
    # <prefix>/usr/lib/var/lib/apptainer ("capability.json: no such file" on every exec).
    ln -s ../etc "$stage/usr/lib/etc"
    ln -s ../var "$stage/usr/lib/var"
    safe_rm "$x"

    conf="$stage/usr/etc/apptainer/apptainer.conf"
    [ -f "$conf" ] || die "no apptainer.conf in $app_deb"
    # Root in containers/VMs often lacks CAP_SYS_RESOURCE etc.; the default "full" then fails.
    if grep -qE '^[[:space:]]*#?[[:space:]]*root default capabilities[[:space:]]*=' "$conf"; then
        sed -i -E 's/^[[:space:]]*#?[[:space:]]*root default capabilities[[:space:]]*=.*/root default capabilities = file/' "$conf"
    else
        echo 'root default capabilities = file' >>"$conf"
    fi

    # Swap the stage in, then patch with the final absolute paths.
    safe_rm "$PREFIX"
    mkdir -p "$(dirname "$PREFIX")"
    chmod 755 "$(dirname "$PREFIX")"
    mv "$stage" "$PREFIX"
    if [ -n "$libc_deb" ]; then
        L="$PREFIX/usr/lib/$TRIPLET"
        for b in "$PREFIX/usr/bin/apptainer" "$L/apptainer/bin/starter"; do
            patchelf --set-interpreter "$L/$LDSO" --set-rpath "$L:/usr/lib/$TRIPLET:/lib/$TRIPLET" "$b"
        done
    fi
    chmod -R go+rX,go-w "$PREFIX"
    "$PREFIX/usr/bin/apptainer" version >/dev/null || die "the relocated apptainer in $PREFIX does not run"
    {
        echo "apptainer_deb=$(basename "$app_deb")"
        echo "apptainer_version=$(dpkg-deb -f "$app_deb" Version)"
        if [ -n "$libc_deb" ]; then echo "libc6_deb=$(basename "$libc_deb")"; else echo "libc6_deb=none (host glibc)"; fi
        echo "libc6_version=${libc_deb:+$(dpkg-deb -f "$libc_deb" Version)}"
        echo "host_libc6=$host_libc"
        echo "host=$HOST_ID $HOST_CODENAME $ARCH"
        echo "mirror=$MIRROR"
        echo "installed=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "layout=$INSTALL_LAYOUT"
    } >"$INFO"
    chmod 644 "$INFO"
    log "apptainer: installed $(dpkg-deb -f "$app_deb" Version) into $PREFIX"
}

ensure_apptainer() {
    local found
    found=$(command -v apptainer || true)
    if [ -n "$found" ] && [ "${KP_FORCE_APPTAINER:-0}" != 1 ]; then
        if [ "$(readlink -f "$found")" = "$(readlink -f "$PREFIX/usr/bin/apptainer")" ] && ! prefix_ok; then
            log "apptainer: $found points into a broken install in $PREFIX: reinstalling"
        else
            APPTAINER=$found
            log "apptainer: using $found ($("$found" version 2>/dev/null || echo '?'))"
            return 0
        fi
    fi
    if prefix_ok; then
        log "apptainer: already installed in $PREFIX"
    else
        install_apptainer
    fi
    mkdir -p "$(dirname "$LINK")"
    ln -sfn "$PREFIX/usr/bin/apptainer" "$LINK"
    APPTAINER=$LINK
    command -v apptainer >/dev/null || log "warning: $(dirname "$LINK") is not on this shell's PATH"
}

# ---------------------------------------------------------------------------------------------
# 2. Root filesystems: one debootstrap, then package stages, each cached as a tar in build/cache.
#    A stage tar's name carries a hash of its recipe (and its parent's), so editing a recipe
#    below rebuilds that stage and the images made from it, and nothing else.

CHROOT_ENV=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 HOME=/root)

chroot_run() {
    local dir=$1; shift
    mkdir -p "$dir/proc"
    mount --bind /proc "$dir/proc"
    MOUNTS+=("$dir/proc")
    local rc=0
    chroot "$dir" "${CHROOT_ENV[@]}" "$@" || rc=$?
    umount "$dir/proc"
    return $rc
}

# chroot_apt_install DIR LOGNAME PACKAGE... (a PACKAGE may be a .deb path inside the chroot)
chroot_apt_install() {
    local dir=$1 logf="$WORK/$2.apt.log"; shift 2
    local opts=(-q -o APT::Install-Recommends=false -o Acquire::Languages=none)
    [ -z "$APT_PROXY" ] || opts+=(-o "Acquire::http::Proxy=$APT_PROXY")
    [ -z "$APT_CHECK_VALID" ] || opts+=(-o "Acquire::Check-Valid-Until=$APT_CHECK_VALID")
    rm -f "$dir/etc/resolv.conf"
    cp -L /etc/resolv.conf "$dir/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
    chmod 755 "$dir/usr/sbin/policy-rc.d"
    { chroot_run "$dir" apt-get "${opts[@]}" update &&
        chroot_run "$dir" apt-get "${opts[@]}" install -y "$@" &&
        chroot_run "$dir" apt-get clean; } >"$logf" 2>&1 ||
        { tail -n 30 "$logf" >&2; die "apt-get install $* in $dir failed (log: $logf)"; }
    rm -rf "$dir"/var/lib/apt/lists/* "$dir/usr/sbin/policy-rc.d"
    : >"$dir/etc/resolv.conf"
}

# An empty package named gdb. python3-ipykernel -> python3-debugpy -> python3-pydevd depends on
# gdb, which drags in ~70 MB (gdb, libicu, boost, libcurl...) that a kernel never uses
# (gdb only serves debugpy's attach-to-PID).
make_gdb_stub() { # make_gdb_stub DEB
    local d
    d=$(mktemp -d "$WORK/gdbstub.XXXXXX")
    mkdir -p "$d/DEBIAN"
    cat >"$d/DEBIAN/control" <<'CTRL'
Package: gdb
Version: 999:0+kernelprovider.stub
Architecture: all
Maintainer: kernelprovider test environment <root@localhost>
Section: devel
Priority: optional
Description: empty stand-in for gdb in kernelprovider test images
 Satisfies python3-pydevd's dependency on gdb without installing it.
CTRL
    dpkg-deb --root-owner-group -Zgzip -b "$d" "$1" >/dev/null
    safe_rm "$d"
}

build_stage_minbase() {
    local dir=$1
    debootstrap --variant=minbase --arch="$ARCH" "$SUITE" "$dir" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed (log: $WORK/debootstrap.log)"; }
    chroot_run "$dir" apt-get clean
    rm -rf "$dir"/var/lib/apt/lists/*
}
build_stage_python3() { chroot_apt_install "$1" python3 python3; }
build_stage_ipykernel() {
    make_gdb_stub "$1/tmp/gdb-stub.deb"
    chroot_apt_install "$1" ipykernel /tmp/gdb-stub.deb python3-ipykernel
    rm -f "$1/tmp/gdb-stub.deb"
}
build_stage_scipy() { chroot_apt_install "$1" scipy python3-numpy python3-scipy python3-pandas; }
stage_parent() {
    case "$1" in
        python3) echo minbase ;;
        ipykernel) echo python3 ;;
        scipy) echo ipykernel ;;
    esac
}

stage_key() { # short hash of a stage's recipe, including its parents'
    local name=$1 parent
    parent=$(stage_parent "$name")
    {
        echo "recipe=$RECIPE_VERSION suite=$SUITE arch=$ARCH stage=$name"
        [ -z "$parent" ] || stage_key "$parent"
        declare -f "build_stage_$name" chroot_apt_install chroot_run
        [ "$name" != ipykernel ] || declare -f make_gdb_stub
    } | sha256sum | cut -c1-12
}
stage_tar() { echo "$CACHE/rootfs-$SUITE-$ARCH-$1-$(stage_key "$1").tar"; }

extract_stage() { # extract_stage NAME DIR
    safe_rm "$2"
    mkdir -p "$2"
    tar -C "$2" --numeric-owner -xpf "$(stage_tar "$1")"
}

ensure_stage() {
    local name=$1 tarball dir parent t
    tarball=$(stage_tar "$name")
    [ -f "$tarball" ] && return 0
    dir="$ROOTFS/stage-$name"
    parent=$(stage_parent "$name")
    [ -z "$parent" ] || ensure_stage "$parent"
    t=$(date +%s)
    if [ -z "$parent" ]; then
        safe_rm "$dir"
        log "rootfs: debootstrap --variant=minbase $SUITE (about half a minute)"
        build_stage_minbase "$dir"
    else
        log "rootfs: stage '$name' = '$parent' + apt-get install"
        extract_stage "$parent" "$dir"
        "build_stage_$name" "$dir"
    fi
    # Drop stale tars of this stage, then cache this one.
    find "$CACHE" -maxdepth 1 -name "rootfs-$SUITE-$ARCH-$name-*.tar" ! -path "$tarball" -delete
    tar -C "$dir" --numeric-owner -cpf "$tarball.partial" .
    mv "$tarball.partial" "$tarball"
    safe_rm "$dir"
    log "rootfs: stage '$name' cached as $(basename "$tarball") ($(du -h "$tarball" | cut -f1), $(($(date +%s) - t)) s)"
}

# Shrink a rootfs. __pycache__ is kept on purpose: without it `import ipykernel` compiles every
# module on every kernel start (about +0.8 s here), since the image is read-only.
strip_rootfs() {
    local d=$1
    rm -rf "$d"/usr/share/doc/* "$d"/usr/share/man/* "$d"/usr/share/info/* "$d"/usr/share/locale/* \
        "$d"/usr/share/lintian "$d"/usr/share/linda "$d"/var/lib/apt/lists/* "$d"/var/cache/apt/* \
        "$d"/var/cache/debconf/*-old "$d"/var/lib/dpkg/*-old "$d"/var/log/*.log "$d"/var/log/apt/* \
        "$d"/usr/sbin/policy-rc.d
    : >"$d/etc/resolv.conf"
}

# ---------------------------------------------------------------------------------------------
# 3. Images

# Per-image recipe: stage, customisation, def file. All of it goes into the image's stamp key.
image_stage() {
    case "$1" in
        kp-test) echo ipykernel ;;
        kp-noipykernel) echo python3 ;;
        kp-nopython) echo minbase ;;
        kp-frameworks) echo ipykernel ;;
        kp-curve) echo ipykernel ;;
        kp-scipy) echo scipy ;;
    esac
}

# Published wheels whose files go into kp-frameworks.sif as they are: JAX's CUDA 12 plugin
# (version.py, dist-info and libraries with a .nv_fatbin section: sm_50..sm_120 code and
# compute_120 PTX) and NVIDIA's CUDA runtime (libcudart.so.12). Small (15 MB together).
FRAMEWORK_WHEELS=(jax-cuda12-plugin==0.7.0 nvidia-cuda-runtime-cu12==12.9.79)

# The pip that downloads them: the venv's (make venv), else the host's python3.
host_pip() {
    if [ -x "$BUILD/venv/bin/python" ]; then "$BUILD/venv/bin/python" -m pip "$@"
    elif python3 -m pip --version >/dev/null 2>&1; then python3 -m pip "$@"
    else die "no pip to download the framework wheels with: run 'make venv' first"; fi
}

cached_wheel() { # cached_wheel NAME==VERSION: path of its wheel in the cache, or nothing
    local name=${1%%==*} version=${1##*==}
    find "$CACHE/wheels" -maxdepth 1 -name "${name//-/_}-$version-*.whl" 2>/dev/null | head -n1
}

# kp-curve.sif: kp-test's stage plus a newer ipykernel/jupyter_client (and what they need
# beyond Debian's packages) from published wheels, installed into /usr/local/lib/python3.11/
# dist-packages, which the image's python3 searches before Debian's: an image whose kernel
# speaks CurveZMQ transport encryption (ipykernel reads the Curve keys from its connection
# file), for the capture test and bench/bench_tunnel.py. Debian's ipykernel (kp-test) cannot.
CURVE_WHEELS=(ipykernel==7.4.0 jupyter_client==8.10.0)

ensure_curve_wheels() { # the wheels and their dependencies, once, into $CACHE/wheels/curve
    local dir="$CACHE/wheels/curve"
    [ -f "$dir/.complete" ] && [ "$(cat "$dir/.complete")" = "${CURVE_WHEELS[*]}" ] && return 0
    mkdir -p "$dir"
    log "wheels: downloading ${CURVE_WHEELS[*]} and dependencies (once; cached in $dir)"
    host_pip download -q --only-binary=:all: --python-version 3.11 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux_2_28_x86_64 -d "$dir" "${CURVE_WHEELS[@]}" >"$WORK/wheels.log" 2>&1 ||
        { tail -n 20 "$WORK/wheels.log" >&2; die "pip download ${CURVE_WHEELS[*]} failed (log: $WORK/wheels.log)"; }
    echo "${CURVE_WHEELS[*]}" >"$dir/.complete"
}

customize_curve() { # customize_curve ROOTFS: install the cached wheels, as pip --target does
    local site="$1/usr/local/lib/python3.11/dist-packages"
    mkdir -p "$site"
    host_pip install -q --no-index --no-deps --no-compile --target "$site" \
        "$CACHE"/wheels/curve/*.whl >"$WORK/curve-wheels.log" 2>&1 ||
        { tail -n 20 "$WORK/curve-wheels.log" >&2; die "installing the curve wheels into $site failed"; }
    rm -rf "$site/bin"
    # The image is read-only: compile now, or every kernel start compiles ipykernel again.
    chroot_run "$1" python3 -m compileall -q /usr/local/lib/python3.11/dist-packages >/dev/null
}

ensure_framework_wheels() {
    local spec
    mkdir -p "$CACHE/wheels"
    for spec in "${FRAMEWORK_WHEELS[@]}"; do
        [ -n "$(cached_wheel "$spec")" ] && continue
        log "wheels: downloading $spec (once; cached in $CACHE/wheels)"
        host_pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
            --platform manylinux2014_x86_64 -d "$CACHE/wheels" "$spec" >"$WORK/wheels.log" 2>&1 ||
            { tail -n 20 "$WORK/wheels.log" >&2; die "pip download $spec failed (log: $WORK/wheels.log)"; }
    done
}

customize_image() { # customize_image NAME ROOTFS
    case "$1" in
        kp-test)
            mkdir -p "$2/usr/local/cuda"
            echo "CUDA Version 9.2.148" >"$2/usr/local/cuda/version.txt"
            ;;
        kp-frameworks)
            # Unpacked as pip would install them (files only: nothing is imported).
            mkdir -p "$2/usr/lib/python3/dist-packages"
            for spec in "${FRAMEWORK_WHEELS[@]}"; do
                python3 -m zipfile -e "$(cached_wheel "$spec")" "$2/usr/lib/python3/dist-packages"
            done
            ;;
    esac
}

image_def() { # image_def NAME ROOTFS
    local name=$1 dir=$2
    printf 'Bootstrap: localimage\nFrom: %s\n\n%%labels\n' "$dir"
    case "$name" in
        kp-test)
            cat <<'EOF'
    CUDA_VERSION 9.2
    TENSORFLOW_VERSION 1.8
    CUDNN_VERSION 7.1
    org.opencontainers.image.title kernelprovider test image
    KERNELPROVIDER_TEST 1
EOF
            ;;
        kp-noipykernel)
            cat <<'EOF'
    org.opencontainers.image.title kernelprovider test image without ipykernel
    KERNELPROVIDER_TEST 1
EOF
            ;;
        kp-nopython)
            cat <<'EOF'
    org.opencontainers.image.title kernelprovider test image without python
    KERNELPROVIDER_TEST 1
EOF
            ;;
        kp-frameworks)
            cat <<'EOF'
    org.opencontainers.image.title kernelprovider test image with genuine framework files
    KERNELPROVIDER_TEST 1
EOF
            ;;
        kp-curve)
            cat <<'EOF'
    org.opencontainers.image.title kernelprovider test image whose ipykernel speaks CurveZMQ
    KERNELPROVIDER_TEST 1
EOF
            ;;
        kp-scipy)
            cat <<'EOF'
    org.opencontainers.image.title kernelprovider bench image with numpy, scipy and pandas
    KERNELPROVIDER_TEST 1
EOF
            ;;
    esac
    printf '\n%%environment\n'
    case "$name" in
        kp-test) printf '    export CUDA_VERSION=9.2\n' ;;
    esac
    printf '    export KP_TEST_IMAGE=%s\n' "$name"
}

image_key() {
    local name=$1
    {
        echo "recipe=$RECIPE_VERSION comp=$COMP stage=$(image_stage "$name")-$(stage_key "$(image_stage "$name")")"
        image_def "$name" ROOTFS
        declare -f strip_rootfs customize_image cached_wheel
        if [ "$name" = kp-frameworks ]; then declare -p FRAMEWORK_WHEELS; fi
        if [ "$name" = kp-curve ]; then declare -f customize_curve; declare -p CURVE_WHEELS; fi
    } | sha256sum | cut -d' ' -f1
}

ensure_image() {
    local name=$1 sif="$IMAGES/$1.sif" stamp="$STAMPS/$1.key" key dir def t tmp_sif
    key=$(image_key "$name")
    if [ -f "$sif" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
        log "image: $name.sif up to date"
        return 0
    fi
    ensure_stage "$(image_stage "$name")"
    t=$(date +%s)
    dir="$ROOTFS/$name"
    log "image: building $name.sif from stage '$(image_stage "$name")'"
    extract_stage "$(image_stage "$name")" "$dir"
    customize_image "$name" "$dir"
    [ "$name" != kp-curve ] || customize_curve "$dir"
    strip_rootfs "$dir"
    def="$WORK/$name.def"
    image_def "$name" "$dir" >"$def"
    tmp_sif="$IMAGES/.$name.partial.sif"
    rm -f "$tmp_sif"
    APPTAINER_TMPDIR="$WORK" APPTAINER_CACHEDIR="$CACHE/apptainer" \
        "$APPTAINER" -q build --force --mksquashfs-args "-comp $COMP" "$tmp_sif" "$def" >"$WORK/$name.build.log" 2>&1 ||
        { tail -n 30 "$WORK/$name.build.log" >&2; die "apptainer build $name failed (log: $WORK/$name.build.log)"; }
    chmod 644 "$tmp_sif"
    mv -f "$tmp_sif" "$sif"
    echo "$key" >"$stamp"
    safe_rm "$dir"
    log "image: built $name.sif ($(du -h "$sif" | cut -f1), $(($(date +%s) - t)) s)"
}

ensure_broken_images() {
    # Not an image at all: random bytes, no SIF magic.
    if [ ! -f "$IMAGES/corrupt.sif" ]; then
        head -c 1048576 /dev/urandom >"$IMAGES/corrupt.sif"
        chmod 644 "$IMAGES/corrupt.sif"
        log "image: wrote corrupt.sif (1 MiB of random bytes)"
    fi
    # A real image cut short: valid SIF header, missing partitions.
    if ! cmp -s <(head -c 65536 "$IMAGES/kp-test.sif") "$IMAGES/truncated.sif" 2>/dev/null; then
        head -c 65536 "$IMAGES/kp-test.sif" >"$IMAGES/truncated.sif"
        chmod 644 "$IMAGES/truncated.sif"
        log "image: wrote truncated.sif (first 64 KiB of kp-test.sif)"
    fi
}

# ---------------------------------------------------------------------------------------------
ensure_host_packages
ensure_apptainer
ensure_framework_wheels
ensure_curve_wheels
for img in kp-test kp-noipykernel kp-nopython kp-frameworks kp-curve; do ensure_image "$img"; done
[ "${KP_BENCH_IMAGES:-0}" != 1 ] || ensure_image kp-scipy
ensure_broken_images
rmdir "$ROOTFS" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
echo
echo "kernelprovider test environment ($(($(date +%s) - T0)) s)"
echo "  apptainer: $APPTAINER -> $(readlink -f "$APPTAINER")"
on_path=$(command -v apptainer || true)
if [ "$(readlink -f "${on_path:-/nonexistent}")" != "$(readlink -f "$APPTAINER")" ]; then
    echo "  note:      \`apptainer\` on PATH is ${on_path:-missing}, not the one above"
fi
echo "  version:   $("$APPTAINER" version)"
if [ -f "$INFO" ] && [ "$(readlink -f "$APPTAINER")" = "$(readlink -f "$PREFIX/usr/bin/apptainer")" ]; then
    echo "  prefix:    $PREFIX ($(grep -E '^(apptainer_deb|libc6_deb)=' "$INFO" | paste -sd' '))"
fi
echo "  images:    $IMAGES"
for f in "$IMAGES"/*.sif; do
    printf '    %-22s %s\n' "$(basename "$f")" "$(du -h "$f" | cut -f1)"
done
# Smoke test: a real container start, the way the kernel provider will do it.
if smoke=$("$APPTAINER" exec "$IMAGES/kp-test.sif" python3 -c \
    'import ipykernel, platform; print("python", platform.python_version(), "ipykernel", ipykernel.__version__)' 2>/dev/null); then
    echo "  smoke:     apptainer exec kp-test.sif: $smoke"
else
    die "smoke test failed: $APPTAINER exec $IMAGES/kp-test.sif python3 -c 'import ipykernel'"
fi
