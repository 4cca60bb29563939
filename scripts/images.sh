#!/usr/bin/env bash
# Builds Baton's container images offline, from files on this machine only: no registry is
# contacted and nothing is pulled (the engine may start with no images at all).
#   baton-base:local  `docker import` of a rootfs assembled here: the shared libraries and the
#                     dynamic loader the binaries below link (per ldd, at the same paths),
#                     /etc/passwd and /etc/group with root and baton (uid/gid 10001),
#                     /etc/nsswitch.conf (hosts: files dns, so getaddrinfo asks Docker's DNS),
#                     an empty /tmp (1777) and /var/lib/baton (baton's). No shell, no coreutils.
#   baton:local       baton-replica, baton-controller, baton-proxy and batonctl in
#                     /usr/local/bin, from target/release without their debug info (this
#                     script runs `cargo build --release` first, a no-op when up to date);
#                     user baton, workdir /var/lib/baton, no entrypoint (compose gives the
#                     command). With BATON_IMAGES_PROFILE=debug: baton:test, from target/debug
#                     (what the tests use; tests/tests/compose.rs).
#   baton-etcd:local  /usr/bin/etcd and /usr/bin/etcdctl from Debian's etcd-server and
#                     etcd-client (scripts/install-prereqs.sh installs them); user baton,
#                     workdir /var/lib/etcd (baton's, 0700), command etcd.
# The last two are `docker build`s of deploy/images/*.Dockerfile on the base, with the legacy
# builder (DOCKER_BUILDKIT=0: it takes the base from the local engine without asking a registry,
# and buildx need not be installed). Every tarball is reproducible (sorted names, mtime 0,
# numeric owners). Each image carries the label baton.inputs.sha256, a hash of everything it is
# made from (this script included); an image whose label matches is reused, so a re-run only
# rebuilds what changed. Staging: target/images/. Usage: scripts/images.sh (no arguments);
# BATON_IMAGES_NO_CARGO=1 packs target/release (or target/debug) as it is instead of running
# cargo first.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022
export LC_ALL=C
started=$SECONDS

LABEL=baton.inputs.sha256
BATON_ID=10001
STAGE=target/images
BINS=(baton-replica baton-controller baton-proxy batonctl)

die() {
  echo "images.sh: $*" >&2
  exit 1
}

sum() { sha256sum "$@" | cut -d' ' -f1; }

# --- what is needed -----------------------------------------------------------------------------
command -v docker >/dev/null 2>&1 ||
  die "docker is not installed (Debian: apt-get install docker.io), or not on PATH"
if ! err=$(docker info --format '{{.ServerVersion}}' 2>&1); then
  die "the Docker daemon is not reachable; start it (systemctl start docker) and check that
this user may use it ('docker info' must work). docker said:
$(sed '/^[[:space:]]*$/d' <<<"$err")"
fi
etcd_bin=$(command -v etcd || true)
etcdctl_bin=$(command -v etcdctl || true)
if [ -z "$etcd_bin" ] || [ -z "$etcdctl_bin" ]; then
  die "etcd and etcdctl are missing: run scripts/install-prereqs.sh (it installs Debian's
etcd-server and etcd-client)"
fi
for tool in ldd getconf tar sha256sum flock; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing"
done

mkdir -p "$STAGE"
exec 9>"$STAGE/.lock"
if ! flock -n 9; then
  echo "waiting for another scripts/images.sh to finish"
  flock 9
fi

# BATON_IMAGES_PROFILE=debug: the debug binaries (target/debug, which the test run builds
# anyway) as baton:test, for tests/tests/compose.rs; baton:local is always the release build.
PROFILE=${BATON_IMAGES_PROFILE:-release}
case $PROFILE in
release) BATON_IMAGE=baton:local cargo_args=(--release) ;;
debug) BATON_IMAGE=baton:test cargo_args=() ;;
*) die "BATON_IMAGES_PROFILE=$PROFILE: use release or debug" ;;
esac
IMAGES=(baton-base:local "$BATON_IMAGE" baton-etcd:local)
if [ "${BATON_IMAGES_NO_CARGO:-0}" = 1 ]; then
  echo "==> BATON_IMAGES_NO_CARGO=1: target/$PROFILE as it is, no cargo build"
else
  command -v cargo >/dev/null 2>&1 || die "cargo is missing: install Rust from https://rustup.rs"
  echo "==> cargo build ${cargo_args[*]} --locked -p baton-replica -p baton-controller -p baton-proxy --bins"
  cargo build "${cargo_args[@]}" --locked -p baton-replica -p baton-controller -p baton-proxy --bins ||
    die "cargo build failed (above); fix the build, then re-run"
fi
command -v objcopy >/dev/null 2>&1 || die "objcopy is missing (Debian: apt-get install binutils)"
# The binaries without their debug info (line tables make them ~60 MB each in release, ~130 MB
# in debug): staged copies, remade only when the build is newer.
mkdir -p "$STAGE/bin-$PROFILE"
bin_paths=()
for b in "${BINS[@]}"; do
  src=target/$PROFILE/$b dst=$STAGE/bin-$PROFILE/$b
  [ -x "$src" ] || die "$src is missing (build it: cargo build ${cargo_args[*]} -p baton-replica -p baton-controller -p baton-proxy --bins)"
  if [ ! -e "$dst" ] || [ "$src" -nt "$dst" ]; then
    objcopy --strip-debug "$src" "$dst.tmp" && mv "$dst.tmp" "$dst"
  fi
  bin_paths+=("$dst")
done

script_sum=$(sum scripts/images.sh)
built=()

# --- helpers ------------------------------------------------------------------------------------

# libs_of BINARY: the absolute paths of the shared objects BINARY loads (its libraries and the
# dynamic loader); nothing for a static binary. Dies if a library cannot be found.
libs_of() {
  local out
  if ! out=$(ldd "$1" 2>&1); then
    case $out in *"not a dynamic executable"*) return 0 ;; esac
    die "ldd $1 failed: $out"
  fi
  case $out in *"not found"*) die "$1 needs libraries this machine lacks:
$out" ;; esac
  awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' <<<"$out"
}

# pack TARBALL DIR [PATH...]: a reproducible tarball of the tree under DIR (sorted names, mtime
# 0, numeric owners): the PATHs (relative to DIR, not recursive) owned by baton, all else by
# root. Ownership comes from tar's --owner/--group, one pass per owner, so the staged files need
# no chown and this script no root. Modes are the staged ones.
pack() {
  local tarball=$1 dir=$2
  shift 2
  local all=$tarball.all mine=$tarball.baton
  (cd "$dir" && find . -mindepth 1 | sed 's|^\./||' | sort) >"$all"
  printf '%s\n' "$@" | sed '/^$/d' | sort >"$mine"
  local common=(--format=gnu --sort=name --mtime=@0 --numeric-owner --hard-dereference
    --no-recursion -C "$dir")
  comm -23 "$all" "$mine" | tar "${common[@]}" --owner=0 --group=0 -cf "$tarball" -T -
  if [ -s "$mine" ]; then
    tar "${common[@]}" --owner="$BATON_ID" --group="$BATON_ID" -rf "$tarball" -T "$mine"
  fi
  rm -f "$all" "$mine"
}

# current IMAGE HASH: true when IMAGE exists with HASH as its inputs' label.
current() {
  local have
  have=$(docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true)
  if [ "$have" = "$2" ]; then
    echo "    $1: reused (inputs unchanged, $LABEL=${2:0:12})"
    return 0
  fi
  return 1
}

# --- baton-base:local ---------------------------------------------------------------------------
echo "==> baton-base:local"
base=$STAGE/base
rootfs=$base/rootfs
rm -rf "$base"
mkdir -p "$rootfs"
for b in "${bin_paths[@]}" "$etcd_bin" "$etcdctl_bin"; do
  libs_of "$b"
done | sort -u >"$base/libs"
# glibc 2.34 moved the files and dns NSS services and libresolv into libc.so.6 (Debian 12 has
# 2.36: getaddrinfo dlopens nothing for `hosts: files dns`). An older glibc dlopens them.
libc=$(grep -m1 '/libc\.so\.6$' "$base/libs" || true)
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{ print $2 }' || true)
if [ -n "$libc" ] && [ -n "$glibc" ] &&
  [ "$(printf '%s\n' 2.34 "$glibc" | sort -V | head -n1)" != 2.34 ]; then
  for l in libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do
    if [ -e "$(dirname "$libc")/$l" ]; then
      echo "$(dirname "$libc")/$l" >>"$base/libs"
    fi
  done
fi
while IFS= read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done <"$base/libs"
mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/var/lib/baton"
chmod 1777 "$rootfs/tmp"
for f in passwd group nsswitch.conf; do
  install -m 0644 "deploy/images/base/etc/$f" "$rootfs/etc/$f"
done
pack "$base/rootfs.tar" "$rootfs" var/lib/baton
base_hash=$(printf '%s\n' "$script_sum" "$(sum "$base/rootfs.tar")" | sum)
if ! current baton-base:local "$base_hash"; then
  t=$SECONDS
  docker import --message "scripts/images.sh" \
    --change "ENV PATH=/usr/local/bin:/usr/bin:/bin" \
    --change "LABEL $LABEL=$base_hash" \
    "$base/rootfs.tar" baton-base:local >/dev/null
  echo "    baton-base:local: built (docker import, $((SECONDS - t))s): $(wc -l <"$base/libs") shared objects"
  built+=(baton-base:local)
fi
sed 's/^/      /' "$base/libs"

# --- the images on the base ---------------------------------------------------------------------

# layered IMAGE DOCKERFILE OWNED SRC DEST [SRC DEST...]: IMAGE built from DOCKERFILE on
# baton-base:local with a layer.tar holding each SRC at DEST (root's, 0755) and the directories
# OWNED (space-separated, baton's, 0700); reused when the hash of all that matches its label.
layered() {
  local image=$1 dockerfile=$2 owned=$3
  shift 3
  local name=${image%%:*} hash i
  echo "==> $image"
  hash=$(
    printf '%s\n' "$script_sum" "$base_hash" "$(sum "$dockerfile")" "$owned"
    for ((i = 1; i < $#; i += 2)); do
      j=$((i + 1))
      printf '%s %s\n' "${!j}" "$(sum "${!i}")"
    done | sort
  )
  hash=$(sum <<<"$hash")
  current "$image" "$hash" && return 0
  local t=$SECONDS dir=$STAGE/$name
  rm -rf "$dir"
  mkdir -p "$dir/layer" "$dir/ctx"
  while [ $# -gt 0 ]; do
    mkdir -p "$dir/layer/$(dirname "$2")"
    install -m 0755 "$1" "$dir/layer/$2"
    shift 2
  done
  local d
  for d in $owned; do
    mkdir -p "$dir/layer/$d"
    chmod 0700 "$dir/layer/$d"
  done
  # shellcheck disable=SC2086 # $owned is a list of plain paths
  pack "$dir/ctx/layer.tar" "$dir/layer" $owned
  rm -rf "$dir/layer"
  cp "$dockerfile" "$dir/ctx/Dockerfile"
  if ! DOCKER_BUILDKIT=0 docker build --pull=false --force-rm --label "$LABEL=$hash" \
    -t "$image" "$dir/ctx" >"$dir/build.log" 2>&1; then
    cat "$dir/build.log" >&2
    die "docker build of $image failed (log: $dir/build.log)"
  fi
  rm -f "$dir/ctx/layer.tar"
  echo "    $image: built (docker build, $((SECONDS - t))s)"
  built+=("$image")
}

baton_files=()
for b in "${BINS[@]}"; do
  baton_files+=("$STAGE/bin-$PROFILE/$b" "usr/local/bin/$b")
done
layered "$BATON_IMAGE" deploy/images/baton.Dockerfile "" "${baton_files[@]}"
layered baton-etcd:local deploy/images/etcd.Dockerfile var/lib/etcd \
  "$etcd_bin" usr/bin/etcd "$etcdctl_bin" usr/bin/etcdctl

# --- the images replaced, then the summary ------------------------------------------------------
# A rebuilt image leaves its predecessor untagged ("dangling"); remove those of ours (they carry
# the label, as does anything built on them) unless a container still uses them. Their untagged
# parents (the legacy builder's steps, an old base) go with them.
dangling() { docker image ls -q --no-trunc --filter dangling=true --filter "label=$LABEL"; }
replaced=$(dangling)
if [ -n "$replaced" ]; then
  docker image prune -f --filter "label=$LABEL" >/dev/null
  kept=$(dangling)
  for id in $replaced; do
    case $kept in
    *"$id"*) echo "==> kept the replaced image ${id:7:12}: a container still uses it" ;;
    *) echo "==> removed the replaced image ${id:7:12}" ;;
    esac
  done
fi

echo "==> ${#built[@]} built${built[*]:+ (${built[*]})}, $((${#IMAGES[@]} - ${#built[@]})) reused, in $((SECONDS - started))s"
filters=()
for image in "${IMAGES[@]}"; do
  filters+=(--filter "reference=$image")
done
docker image ls "${filters[@]}" --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.CreatedSince}}\t{{.Size}}'
