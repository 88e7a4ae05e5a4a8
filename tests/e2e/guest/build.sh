#!/bin/bash
# Build (or reuse from the cache) the Corral test guest: Debian 12 with systemd, the unified
# cgroup v2 hierarchy and SELinux enforcing (refpolicy "default", MCS), plus refpolicy's
# `container` module, so the agent can be proven where this host cannot (cgroup v2, systemd,
# SELinux). Prints the directory holding vmlinuz, initrd.img and rootfs.img on its last line.
#
# The image is keyed by a hash of its inputs (this script, image/, agent/requirements.txt).
# The agent's source and the scenario code are NOT in the image: the harness puts them on a
# second small disk at every boot, so editing agent code never forces a rebuild.
#
# Cache: ${CORRAL_GUEST_CACHE:-/var/tmp/corral-guest}
#   downloads/        kernel and selinux-policy-src .debs (apt-get download, reused)
#   base-<key>/       debootstrap tree, keyed by the package list (the slow part, ~2-3 min)
#   image-<key>/      vmlinuz initrd.img rootfs.img kver build.log DONE
# Env: CORRAL_GUEST_REBUILD=1 ignores a cached image; CORRAL_GUEST_MIRROR overrides the apt
# mirror (default: the host's own apt source).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
CACHE=${CORRAL_GUEST_CACHE:-/var/tmp/corral-guest}
SUITE=bookworm
# Everything the guest needs at run time; the agent's Python deps go in with pip below.
PKGS=systemd-sysv,udev,dbus,kmod,iproute2,procps,netbase,python3,selinux-basics
PKGS=$PKGS,selinux-policy-default,policycoreutils,selinux-utils
# Kernel module trees copied into the guest (overlay, veth, bridge, netfilter, virtio...).
MODDIRS="kernel/fs kernel/net kernel/lib kernel/crypto kernel/arch kernel/block kernel/mm
kernel/drivers/virtio kernel/drivers/block kernel/drivers/char kernel/drivers/md
kernel/drivers/net/veth.ko kernel/drivers/net/virtio_net.ko kernel/drivers/net/net_failover.ko
kernel/drivers/net/dummy.ko kernel/drivers/net/macvlan.ko kernel/drivers/net/ipvlan
kernel/drivers/net/vxlan kernel/drivers/net/tun.ko"

say() { echo "build.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

need_tools() {
  local missing=() t pkg
  for t in debootstrap:debootstrap mke2fs:e2fsprogs depmod:kmod modprobe:kmod cpio:cpio \
      busybox:busybox-static make:make m4:m4 checkmodule:checkpolicy zstd:zstd \
      apt-get:apt dpkg-deb:dpkg; do
    command -v "${t%%:*}" >/dev/null 2>&1 || missing+=("${t#*:}")
  done
  [ -f /usr/share/selinux/devel/Makefile ] || missing+=(selinux-policy-dev)
  dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
  if [ ${#missing[@]} -gt 0 ]; then
    die "step preflight: missing host packages: $(printf '%s\n' "${missing[@]}" | sort -u | xargs)"
  fi
  [ "$(id -u)" = 0 ] || die "step preflight: must run as root (debootstrap, chroot, mounts)"
}

hash_inputs() {
  # Stable order; the key changes when any input to the image changes.
  (cd "$HERE" && cat build.sh && find image -type f | LC_ALL=C sort | xargs cat) \
    | cat - "$REPO/agent/requirements.txt" | sha256sum | cut -c1-16
}

apt_mirror() {
  if [ -n "${CORRAL_GUEST_MIRROR:-}" ]; then echo "$CORRAL_GUEST_MIRROR"; return; fi
  local m
  m=$(grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
      | grep -v security | head -1 || true)
  [ -n "$m" ] || m=$(grep -hE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' \
      | grep -v security | head -1 || true)
  [ -n "$m" ] || die "step mirror: no apt mirror found in the host's apt sources"
  echo "$m"
}

download_debs() {
  local d=$CACHE/downloads kpkg
  mkdir -p "$d"
  kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
         | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)
  if [ -z "$kpkg" ]; then  # a fresh machine may have no apt lists yet
    say "apt knows no linux-image-amd64: running apt-get update"
    apt-get update -qq >&2 || die "step kernel: apt-get update failed"
    kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null \
           | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)
  fi
  [ -n "$kpkg" ] || die "step kernel: apt-cache knows no linux-image-amd64 (run apt-get update)"
  if ! ls "$d/${kpkg}"_*.deb >/dev/null 2>&1; then
    (cd "$d" && apt-get download "$kpkg" 2>&1 | grep -v unsandboxed >&2) \
      || die "step kernel: apt-get download $kpkg failed"
  fi
  if ! ls "$d"/selinux-policy-src_*.deb >/dev/null 2>&1; then
    (cd "$d" && apt-get download selinux-policy-src 2>&1 | grep -v unsandboxed >&2) \
      || die "step policy: apt-get download selinux-policy-src failed"
  fi
  KDEB=$(ls "$d/${kpkg}"_*.deb | head -1)
  PSRCDEB=$(ls "$d"/selinux-policy-src_*.deb | head -1)
}

build_base() {
  # debootstrap is most of a cold build, so its tree is cached on its own key.
  local bkey base mirror t0
  bkey=$(printf '%s %s v1' "$SUITE" "$PKGS" | sha256sum | cut -c1-16)
  base=$CACHE/base-$bkey
  BASE=$base/rootfs
  [ -f "$base/DONE" ] && return 0
  umount_under "$base"
  rm -rf "$base"; mkdir -p "$base"
  mirror=$(apt_mirror)
  say "debootstrap $SUITE from $mirror (a few minutes)"
  t0=$(date +%s)
  debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$BASE" "$mirror" \
      >"$base/debootstrap.log" 2>&1 \
    || { tail -30 "$base/debootstrap.log" >&2; die "step debootstrap failed (log above)"; }
  chroot "$BASE" apt-get clean
  touch "$base/DONE"
  say "debootstrap took $(( $(date +%s) - t0 ))s"
}

build_kernel() {
  # Debian's stock kernel and a tiny busybox initramfs: load virtio + ext4, switch_root.
  local x=$TMP/kernel i=$TMP/initrd m
  mkdir -p "$x"
  dpkg-deb -x "$KDEB" "$x"
  KVER=$(ls "$x/lib/modules" | head -1)
  depmod -b "$x" "$KVER"
  cp "$x/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
  # The guest's /boot/config-* lets the agent's inventory read the kernel configuration.
  install -D -m 0644 "$x/boot/config-$KVER" "$R/boot/config-$KVER"
  echo "$KVER" >"$OUT/kver"
  mkdir -p "$i"/{bin,dev,proc,sys,newroot,mods}
  cp /bin/busybox "$i/bin/busybox"
  for m in sh mount umount insmod switch_root sleep mkdir cat echo; do ln -s busybox "$i/bin/$m"; done
  : >"$i/mods/order"
  for m in virtio_pci virtio_blk crc32c_generic ext4 virtio_net virtio_rng; do
    modprobe -d "$x" -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
  done | awk '!seen[$0]++' | grep -v crc32c-intel | while read -r f; do
    cp "$f" "$i/mods/"; basename "$f" >>"$i/mods/order"
  done
  install -m 0755 "$HERE/image/initrd-init" "$i/init"
  (cd "$i" && find . | cpio -o -H newc --quiet | gzip -1) >"$OUT/initrd.img"
  # Modules the guest loads at run time (overlay, veth, bridge, nf_tables...).
  local dst=$R/lib/modules/$KVER
  mkdir -p "$dst"
  (cd "$x/lib/modules/$KVER" && cp --parents -a $MODDIRS modules.order modules.builtin* "$dst/")
  chroot "$R" depmod "$KVER"
}

build_policy() {
  # Debian 12 ships no container.pp: build refpolicy's container module from Debian's own
  # policy source, plus this project's small module (image/corral_guest.te).
  local p=$TMP/pol
  mkdir -p "$p/src"
  dpkg-deb -x "$PSRCDEB" "$p/src"
  tar -C "$p/src" -xf "$p/src/usr/src/selinux-policy-src.tar.zst" \
      selinux-policy-src/policy/modules/services/container.te \
      selinux-policy-src/policy/modules/services/container.fc \
      selinux-policy-src/policy/modules/services/container.if
  cp "$p/src/selinux-policy-src/policy/modules/services/"container.{te,fc,if} "$p/"
  cp "$HERE/image/corral_guest.te" "$p/"
  (cd "$p" && make -f /usr/share/selinux/devel/Makefile container.pp corral_guest.pp \
      >"$p/make.log" 2>&1) || { tail -20 "$p/make.log" >&2; die "step policy: module build failed"; }
  cp "$p/container.pp" "$p/corral_guest.pp" "$R/tmp/"
  chroot "$R" semodule -i /tmp/container.pp -i /tmp/corral_guest.pp \
    || die "step policy: semodule -i in the guest tree failed"
  rm -f "$R/tmp/container.pp" "$R/tmp/corral_guest.pp"
  chroot "$R" semodule -l | grep -qx corral_guest || die "step policy: corral_guest not installed"
}

install_python_deps() {
  # The guest has no network: install the agent's requirements from the host's pip, for the
  # guest's own interpreter (Debian 12: python3.11, glibc 2.36, same as this host).
  local py gv hv
  py=$REPO/.venv/bin/python; [ -x "$py" ] || py=python3
  gv=$(chroot "$R" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  hv=$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  [ "$gv" = "$hv" ] || die "step pip: host python $hv cannot install wheels for guest python $gv"
  "$py" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
      --target "$R/opt/corral/site-packages" -r "$REPO/agent/requirements.txt" >&2 \
    || die "step pip: installing agent/requirements.txt into the guest failed"
  # pip evaluates environment markers for the interpreter it runs in, not for --target's:
  # e.g. redis needs async-timeout only below Python 3.11.3 (the guest has 3.11.2). Add what
  # the guest's markers ask for until nothing is missing.
  local env extra n
  env=$(chroot "$R" python3 -c "$GUEST_ENV_PY")
  for n in 1 2 3 4 5; do
    extra=$("$py" -c "$MISSING_FOR_GUEST_PY" "$R/opt/corral/site-packages" "$env") \
      || die "step pip: cannot evaluate the guest's environment markers"
    [ -n "$extra" ] || break
    say "adding for the guest's markers: $extra"
    # shellcheck disable=SC2086
    "$py" -m pip install --quiet --disable-pip-version-check --only-binary=:all: --no-deps \
        --target "$R/opt/corral/site-packages" $extra >&2 \
      || die "step pip: installing $extra for the guest failed"
  done
}

# The guest interpreter's PEP 508 marker environment, as JSON.
GUEST_ENV_PY='
import json, os, platform, sys
v = platform.python_version()
print(json.dumps({"implementation_name": sys.implementation.name,
    "implementation_version": v, "os_name": os.name, "platform_machine": platform.machine(),
    "platform_release": platform.release(), "platform_system": platform.system(),
    "platform_version": platform.version(), "python_full_version": v,
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(v.split(".")[:2]), "sys_platform": sys.platform}))'

# Requirements of installed distributions whose markers hold for the guest but are missing.
MISSING_FOR_GUEST_PY='
import json, pathlib, sys
from email.parser import Parser
from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name
target, env = pathlib.Path(sys.argv[1]), json.loads(sys.argv[2])
metas = [Parser().parsestr(p.read_text()) for p in target.glob("*.dist-info/METADATA")]
have = {canonicalize_name(m["Name"]) for m in metas}
want = set()
for m in metas:
    for line in m.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if canonicalize_name(req.name) in have:
            continue
        if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
            want.add(req.name + str(req.specifier))
print(" ".join(sorted(want)))'


install_payload_hooks() {
  install -D -m 0755 "$HERE/image/corral-guest-run" "$R/usr/local/sbin/corral-guest-run"
  install -D -m 0644 "$HERE/image/corral-guest.service" \
      "$R/etc/systemd/system/corral-guest.service"
  install -D -m 0644 "$HERE/image/corral-guest.target" "$R/etc/systemd/system/corral-guest.target"
  mkdir -p "$R/etc/systemd/system/multi-user.target.wants"
  ln -sf /etc/systemd/system/corral-guest.service \
      "$R/etc/systemd/system/multi-user.target.wants/corral-guest.service"
  # Nothing logs in: no gettys fighting the scenario over the console.
  ln -sf /dev/null "$R/etc/systemd/system/serial-getty@ttyS0.service"
  ln -sf /dev/null "$R/etc/systemd/system/serial-getty@ttyS1.service"
  ln -sf /dev/null "$R/etc/systemd/system/getty@tty1.service"
  install -D -m 0755 /bin/busybox "$R/usr/local/lib/corral/busybox"
  mkdir -p "$R/opt/corral/payload" "$R/var/lib/corral"
  echo "/dev/vda / ext4 rw,relatime 0 1" >"$R/etc/fstab"
  echo corral-guest >"$R/etc/hostname"
  sed -i 's/^SELINUX=.*/SELINUX=enforcing/; s/^SELINUXTYPE=.*/SELINUXTYPE=default/' \
      "$R/etc/selinux/config"
  rm -f "$R/.autorelabel"
  rm -rf "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/locale/* \
      "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin
}

label_tree() {
  # Label at build time (setfiles needs /proc in the chroot: libselinux goes via
  # /proc/self/fd); mke2fs -d later copies the security.selinux xattrs into the image.
  mount -t proc proc "$R/proc"
  chroot "$R" setfiles -F /etc/selinux/default/contexts/files/file_contexts / \
    || die "step label: setfiles failed"
  umount "$R/proc"
  local d ctx
  for d in proc sys dev run tmp; do
    ctx=$(chroot "$R" matchpathcon -n "/$d")
    [ "$ctx" = "<<none>>" ] && ctx=system_u:object_r:proc_t:s0
    setxattr "$R/$d" "$ctx"
  done
  # The scenario's entry point runs as container_engine_t, like a container engine.
  setxattr "$R/usr/local/sbin/corral-guest-run" system_u:object_r:container_engine_exec_t:s0
  setxattr "$R/var/lib/corral" system_u:object_r:container_var_lib_t:s0
}

setxattr() {
  python3 -c 'import os, sys; os.setxattr(sys.argv[1], "security.selinux", sys.argv[2].encode() + b"\0")' \
    "$1" "$2"
}

umount_under() {
  # Anything still mounted below $1 (an interrupted debootstrap or chroot step), deepest
  # first, before a tree is removed: rm -rf must never walk into a live /proc or /dev.
  local m
  awk -v p="$1/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || true
  done
}

cleanup() {
  umount_under "$CACHE"
  [ -n "${TMP:-}" ] && rm -rf "$TMP"
  return 0
}

main() {
  need_tools
  mkdir -p "$CACHE"
  KEY=$(hash_inputs)
  OUT=$CACHE/image-$KEY
  exec 9>"$CACHE/.lock"
  flock 9
  if [ -f "$OUT/DONE" ] && [ "${CORRAL_GUEST_REBUILD:-0}" != 1 ]; then
    say "cached image $OUT"
    echo "$OUT"; return 0
  fi
  local t0; t0=$(date +%s)
  trap cleanup EXIT
  trap 'exit 143' TERM INT
  download_debs
  build_base
  TMP=$(mktemp -d "$CACHE/tmp.XXXXXX")
  R=$TMP/rootfs
  OUT=$TMP/out; mkdir -p "$OUT"
  say "copying the debootstrap tree"
  cp -a "$BASE" "$R"
  build_kernel
  build_policy
  install_python_deps
  install_payload_hooks
  label_tree
  say "writing rootfs.img"
  mke2fs -q -t ext4 -L corral-root -d "$R" "$OUT/rootfs.img" 3G || die "step image: mke2fs failed"
  echo "built in $(( $(date +%s) - t0 ))s, key $KEY, kernel $KVER" >"$OUT/build.log"
  touch "$OUT/DONE"
  rm -rf "$CACHE/image-$KEY"
  mv "$OUT" "$CACHE/image-$KEY"
  # Older images (other keys) are dropped: only the current one is useful.
  find "$CACHE" -maxdepth 1 -name 'image-*' ! -name "image-$KEY" -exec rm -rf {} +
  say "$(cat "$CACHE/image-$KEY/build.log")"
  echo "$CACHE/image-$KEY"
}

main "$@"
