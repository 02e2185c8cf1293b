#!/usr/bin/env bash
# setup-users.sh — unprivileged users for kernelprovider's "other users" tests (tests/hardening).
#
#   sudo scripts/setup-users.sh
#
# 1. Creates the test users (default kpuser1 and kpuser2): own group, home, /bin/bash, no
#    password (locked). Users that already exist are left as they are.
# 2. Makes /dev/fuse usable by every user (mode 0666), so unprivileged apptainer can mount SIF
#    images through squashfuse inside its user namespace.
# 3. Builds build/venv-user: a venv of the system python (/usr/bin/python3; the main build/venv
#    uses a python under /root that other users cannot run) with kernelprovider installed in
#    editable mode plus its test extra, readable by everyone.
# 4. Checks, as the first test user, that user namespaces work, that the repository, the venv
#    and the test image are readable, and that `apptainer exec kp-test.sif true` runs; on a
#    failure it says which of these broke and what to change.
#
# Idempotent: a second run changes nothing and reinstalls the venv only when setup.cfg or
# pyproject.toml changed. Run it after scripts/setup-testenv.sh (which builds the images).
#
# Environment knobs (all optional):
#   KP_TEST_USERS     users to create             (default "kpuser1 kpuser2")
#   KP_USER_PYTHON    python for the user venv    (default /usr/bin/python3)
#   KP_USER_VENV      the user venv               (default <repo>/build/venv-user)
#   KP_TEST_IMAGES    directory of the test images (default <repo>/build/images)

set -Eeuo pipefail
umask 022

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
read -r -a USERS <<<"${KP_TEST_USERS:-kpuser1 kpuser2}"
PYTHON=${KP_USER_PYTHON:-/usr/bin/python3}
VENV=${KP_USER_VENV:-$REPO_ROOT/build/venv-user}
IMAGES=${KP_TEST_IMAGES:-$REPO_ROOT/build/images}
IMAGE="$IMAGES/kp-test.sif"

log() { printf 'setup-users: %s\n' "$*" >&2; }
die() { printf 'setup-users: ERROR: %s\n' "$*" >&2; exit 1; }
trap 'printf "setup-users: ERROR: command failed (exit %s) at line %s: %s\n" "$?" "$LINENO" "$BASH_COMMAND" >&2' ERR

[ "$(id -u)" -eq 0 ] || die "run me as root (useradd, chmod /dev/fuse and runuser need it)"
[ ${#USERS[@]} -ge 2 ] || die "KP_TEST_USERS must name at least two users (a victim and another)"
FIRST=${USERS[0]}

# as_user USER CMD...: run CMD as USER with a clean, predictable environment.
as_user() {
    local u=$1; shift
    local home
    home=$(getent passwd "$u" | cut -d: -f6)
    (cd / && runuser -u "$u" -- env -i HOME="$home" USER="$u" LOGNAME="$u" \
        PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 "$@")
}

# ---------------------------------------------------------------------------------------------
# 1. Users
for u in "${USERS[@]}"; do
    if id "$u" >/dev/null 2>&1; then
        log "user $u: exists (uid $(id -u "$u"))"
    else
        useradd --create-home --user-group --shell /bin/bash --comment "kernelprovider test user" "$u"
        log "user $u: created (uid $(id -u "$u"))"
    fi
    home=$(getent passwd "$u" | cut -d: -f6)
    [ -d "$home" ] || { mkdir -p "$home"; chown "$u:" "$home"; }
    chmod 0750 "$home"
done

# ---------------------------------------------------------------------------------------------
# 2. /dev/fuse for everyone (unprivileged squashfuse). A test machine only: on a real site the
#    distribution's udev rules or a 'fuse' group do this.
if [ ! -e /dev/fuse ]; then
    modprobe fuse 2>/dev/null || true
    [ -e /dev/fuse ] || mknod -m 0666 /dev/fuse c 10 229 ||
        die "/dev/fuse is missing and cannot be created (load the fuse module on the host)"
fi
if [ "$(stat -c %a /dev/fuse)" != 666 ]; then
    chmod 0666 /dev/fuse
    log "/dev/fuse: chmod 0666"
else
    log "/dev/fuse: already 0666"
fi

# ---------------------------------------------------------------------------------------------
# 3. The user venv
[ -x "$PYTHON" ] || die "$PYTHON not found; install Debian's python3 (apt-get install -y python3)"
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
    log "installing python3-venv"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null ||
        { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
          DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; }
fi
STAMP="$VENV/.kp-installed"
if [ ! -x "$VENV/bin/python" ] || [ "$(readlink -f "$VENV/bin/python")" != "$(readlink -f "$PYTHON")" ]; then
    rm -rf --one-file-system "$VENV"
    "$PYTHON" -m venv "$VENV"
    log "venv: created $VENV from $PYTHON"
fi
if [ ! -f "$STAMP" ] || [ "$REPO_ROOT/setup.cfg" -nt "$STAMP" ] || [ "$REPO_ROOT/pyproject.toml" -nt "$STAMP" ]; then
    log "venv: installing kernelprovider (editable) and its test extra"
    # setuptools' warnings about the editable build are noise here; shown only on failure.
    pip_log=$(mktemp)
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
           (cd "$REPO_ROOT" && "$VENV/bin/python" -m pip install -q -e '.[test]'); } >"$pip_log" 2>&1; then
        tail -n 40 "$pip_log" >&2
        rm -f "$pip_log"
        die "pip install -e '.[test]' into $VENV failed (last lines above)"
    fi
    rm -f "$pip_log"
    touch "$STAMP"
else
    log "venv: up to date"
fi
chmod -R go+rX,go-w "$VENV"

# ---------------------------------------------------------------------------------------------
# 4. Checks, as the first user
why_no_userns() {
    log "user namespaces: kernel.unprivileged_userns_clone=$(cat /proc/sys/kernel/unprivileged_userns_clone 2>/dev/null || echo n/a)," \
        "user.max_user_namespaces=$(cat /proc/sys/user/max_user_namespaces 2>/dev/null || echo n/a)," \
        "kernel.apparmor_restrict_unprivileged_userns=$(cat /proc/sys/kernel/apparmor_restrict_unprivileged_userns 2>/dev/null || echo n/a)"
}
if ! as_user "$FIRST" unshare --user --map-root-user true 2>/dev/null; then
    why_no_userns
    die "user $FIRST cannot create a user namespace, so apptainer cannot run unprivileged. Set" \
        "'sysctl -w user.max_user_namespaces=15000' and 'sysctl -w kernel.unprivileged_userns_clone=1'" \
        "(where they exist), or install apptainer-suid."
fi
log "user namespaces: usable by $FIRST"

as_user "$FIRST" test -r "$REPO_ROOT/kernelprovider/__init__.py" ||
    die "user $FIRST cannot read $REPO_ROOT (see 'namei -l $REPO_ROOT'); clone the repository under a world-readable directory"
as_user "$FIRST" "$VENV/bin/python" -c 'import kernelprovider, jupyter_client, ipykernel' ||
    die "user $FIRST cannot import kernelprovider from $VENV"
log "venv: $FIRST imports kernelprovider from $VENV"

[ -f "$IMAGE" ] || die "test image $IMAGE is missing: run scripts/setup-testenv.sh first"
chmod a+r "$IMAGE"
if ! as_user "$FIRST" test -r "$IMAGE"; then
    namei -l "$IMAGE" >&2 || true
    die "user $FIRST cannot read $IMAGE (a parent directory is not world-searchable); set" \
        "KP_TEST_IMAGES to a world-readable copy, e.g. /var/tmp/kp-images"
fi
if ! out=$(as_user "$FIRST" apptainer exec "$IMAGE" id -u 2>&1); then
    printf '%s\n' "$out" >&2
    ls -l /dev/fuse >&2
    why_no_userns
    die "'runuser -u $FIRST -- apptainer exec $IMAGE id -u' failed (output above)"
fi
[ "$(printf '%s\n' "$out" | tail -n1)" = "$(id -u "$FIRST")" ] ||
    die "apptainer exec as $FIRST ran as uid '$(printf '%s\n' "$out" | tail -n1)', not $(id -u "$FIRST")"
log "apptainer: $FIRST runs $IMAGE unprivileged (squashfuse in a user namespace)"
log "ready: users ${USERS[*]}, venv $VENV"
