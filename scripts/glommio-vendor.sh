#!/usr/bin/env bash
# vendor/glommio is the pinned glommio crate from crates.io, pruned, plus the patches in
# vendor/glommio-patches applied in order; vendor/glommio/BEACON.md says what each does and why.
#
# Usage: scripts/glommio-vendor.sh check        rebuild in a temporary directory and compare with
#                                               vendor/glommio (CI: scripts/test.sh); exit 1 with
#                                               the diff when they differ
#        scripts/glommio-vendor.sh apply        rebuild vendor/glommio (BEACON.md is kept)
#        scripts/glommio-vendor.sh edit DIR     make DIR a git repository: the pruned upstream
#                                               (tag `upstream`), then one commit per patch
#        scripts/glommio-vendor.sh export DIR   write DIR's commits since `upstream` back as
#                                               vendor/glommio-patches/*.patch
#
# The crate is read from $GLOMMIO_CRATE, ~/.cache/beacon or cargo's registry cache, else downloaded
# from static.crates.io into ~/.cache/beacon; whichever copy is used must match the pinned sha256.
set -euo pipefail
start=$PWD
cd "$(dirname "$0")/.."
root=$PWD

crate=glommio-0.9.0
# crates.io's checksum for glommio 0.9.0 (its index entry's "cksum"); the package was made from
# DataDog/glommio commit b13cca0ae76cc16c74b0e7e75c1aeed856b3b549 (its .cargo_vcs_info.json).
crate_sha256=e1f8bc1fce949d18098dc0a4e861314e40351a0144ebf61e59bdb5254a2273b2
crate_url=https://static.crates.io/crates/glommio/$crate.crate
cache_dir=${XDG_CACHE_HOME:-$HOME/.cache}/beacon
vendor=vendor/glommio
patches=vendor/glommio-patches
# Files of the package that Beacon does not build: upstream's tests and benches, the package's
# own metadata, and of liburing everything but what build.rs reads (configure, src/) and its
# licence and README: its tests, man pages, examples, make files, CI and packaging files.
prune=(
  tests benches Cargo.toml.orig .cargo_vcs_info.json
  liburing/{test,man,examples,debian,Makefile,Makefile.quiet,liburing.pc.in,liburing.spec,make-debs.sh}
  liburing/{.gitignore,.travis.yml}
)

die() { echo "glommio-vendor: $*" >&2; exit 1; }

# The edit and export directories are named relative to where the script was started.
from_start() { case "$1" in /*) echo "$1" ;; *) echo "$start/$1" ;; esac; }

sha_ok() { [ -f "$1" ] && echo "$crate_sha256  $1" | sha256sum --check --status; }

# Prints the path of a verified copy of the pinned crate, downloading it when none is cached.
crate_file() {
  if [ -n "${GLOMMIO_CRATE:-}" ]; then
    sha_ok "$GLOMMIO_CRATE" || die "GLOMMIO_CRATE=$GLOMMIO_CRATE does not match sha256 $crate_sha256"
    echo "$GLOMMIO_CRATE"
    return
  fi
  local candidate
  for candidate in "$cache_dir/$crate.crate" \
    "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate.crate"; do
    if sha_ok "$candidate"; then
      echo "$candidate"
      return
    fi
  done
  mkdir -p "$cache_dir"
  local part
  part=$(mktemp "$cache_dir/$crate.XXXXXX")
  curl -sSfL --retry 3 -o "$part" "$crate_url" || { rm -f "$part"; die "could not download $crate_url"; }
  sha_ok "$part" || { rm -f "$part"; die "$crate_url does not match sha256 $crate_sha256"; }
  mv "$part" "$cache_dir/$crate.crate"
  echo "$cache_dir/$crate.crate"
}

# Unpacks and prunes the pinned crate into the new directory $1.
unpack() {
  local file
  file=$(crate_file)
  mkdir "$1"
  tar -xzf "$file" -C "$1" --strip-components=1
  (cd "$1" && rm -rf -- "${prune[@]}")
}

# Applies every patch, in order, to the tree in $1; git stays out of any repository above it.
apply_patches() {
  local patch
  for patch in "$root/$patches"/*.patch; do
    (cd "$1" && GIT_CEILING_DIRECTORIES=$(dirname "$1") git apply --whitespace=nowarn "$patch") ||
      die "$(basename "$patch") does not apply"
  done
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

case "${1:-}" in
  check)
    unpack "$tmp/glommio"
    apply_patches "$tmp/glommio"
    if ! diff -r -x BEACON.md "$tmp/glommio" "$vendor" >/dev/null; then
      diff -ru -x BEACON.md "$tmp/glommio" "$vendor" | sed "s|$tmp/glommio|upstream+patches|g" || true
      die "$vendor differs from $crate plus $patches (scripts/glommio-vendor.sh apply rebuilds it)"
    fi
    series=("$patches"/*.patch)
    echo "glommio-vendor: $vendor is $crate plus ${#series[@]} patches"
    ;;
  apply)
    unpack "$tmp/glommio"
    apply_patches "$tmp/glommio"
    if [ -f "$vendor/BEACON.md" ]; then cp "$vendor/BEACON.md" "$tmp/glommio/"; fi
    rm -rf "$vendor"
    cp -a "$tmp/glommio" "$vendor"
    echo "glommio-vendor: rebuilt $vendor"
    ;;
  edit)
    [ -n "${2:-}" ] && [ ! -e "$(from_start "$2")" ] || die "edit needs a directory that does not exist yet"
    work=$(from_start "$2")
    unpack "$work"
    git -C "$work" init -q
    git -C "$work" add -A
    git -C "$work" -c user.name=crates.io -c user.email=crates.io@localhost \
      commit -qm "$crate from crates.io, pruned"
    git -C "$work" tag upstream
    git -C "$work" -c user.name=Beacon -c user.email=beacon@localhost am -q "$root/$patches"/*.patch
    echo "glommio-vendor: $work has $crate (tag upstream) and one commit per patch"
    ;;
  export)
    [ -n "${2:-}" ] || die "export needs the directory made by edit"
    work=$(from_start "$2")
    git -C "$work" rev-parse -q --verify upstream >/dev/null || die "$work was not made by edit"
    rm -f "$patches"/*.patch
    git -C "$work" format-patch -q -N --zero-commit --no-signature -o "$root/$patches" upstream..HEAD
    ls "$patches"
    ;;
  *)
    sed -n '2,/^set /p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 2
    ;;
esac
