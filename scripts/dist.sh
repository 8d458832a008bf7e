#!/usr/bin/env bash
# dist.sh: builds the release tarball an operator unpacks on a control-plane node.
#
#   scripts/dist.sh        (from any directory)
#
# It builds a static, stripped x86_64-unknown-linux-musl binary (no libc to match on the
# target host, and the same file goes into the FROM-scratch image, see Dockerfile), checks
# that `file` calls it static and that it is under 5 MB, and writes
#
#   dist/kube-event-<version>-x86_64-linux-musl.tar.gz
#
# which unpacks to one folder, kube-event-<version>/, holding the binary, the sample
# kube-event.conf (logging to logs/kube-event.log), start.sh, stop.sh, the systemd unit,
# deploy/, scripts/make-kubeconfig.sh, README.md and SHA256SUMS. The version comes from
# Cargo.toml; the git commit is compiled in (KUBE_EVENT_GIT_COMMIT, shown by --version).
#
# Missing pieces are added when possible (the rustup target; musl-tools through apt-get when
# running as root), otherwise it says exactly what to install and exits 1.
set -euo pipefail

ROOT="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
cd "$ROOT"

TARGET=x86_64-unknown-linux-musl
# 5 MB, counted in decimal so that it holds whichever way "MB" is read.
MAX_BYTES=5000000

die() {
  echo "dist.sh: $*" >&2
  exit 1
}

# The version of [package] in Cargo.toml (not of a dependency table further down).
VERSION="$(awk '
  /^\[/ { in_package = ($0 == "[package]") }
  in_package && /^version *=/ { gsub(/^version *= *"|".*$/, ""); print; exit }
' Cargo.toml)"
[[ -n $VERSION ]] || die "no version in the [package] table of $ROOT/Cargo.toml"
NAME="kube-event-$VERSION"
TARBALL="$ROOT/dist/$NAME-x86_64-linux-musl.tar.gz"

# --- Toolchain -------------------------------------------------------------------------------
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs)"
for tool in file tar gzip sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: install it (Debian/Ubuntu: apt-get install $tool)"
done

if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx "$TARGET"; then
    echo "== rustup target add $TARGET"
    rustup target add "$TARGET"
  fi
else
  echo "dist.sh: rustup not found; assuming the Rust toolchain already has the $TARGET target" >&2
fi

# ring (TLS) compiles C for the target, which needs musl's compiler wrapper.
if ! command -v musl-gcc >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "== apt-get install -y musl-tools (musl-gcc is missing)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y musl-tools; then
      apt-get update
      DEBIAN_FRONTEND=noninteractive apt-get install -y musl-tools
    fi
  else
    cat >&2 <<'MSG'
dist.sh: musl-gcc not found. Install musl's C compiler wrapper, then run dist.sh again:
  Debian/Ubuntu:  sudo apt-get install -y musl-tools
  Fedora:         sudo dnf install -y musl-gcc
  Arch:           sudo pacman -S musl
MSG
    exit 1
  fi
  command -v musl-gcc >/dev/null 2>&1 || die "musl-tools is installed but musl-gcc is still not on PATH"
fi

# --- Build -----------------------------------------------------------------------------------
# The commit goes into the binary (option_env! in main.rs). "-dirty" when the working tree
# differs from it, untracked files included: they can be compiled in too. A value already in
# the environment wins (a build from a source tarball without .git).
if [[ -z ${KUBE_EVENT_GIT_COMMIT:-} ]]; then
  if command -v git >/dev/null 2>&1 && git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    KUBE_EVENT_GIT_COMMIT="$(git -C "$ROOT" rev-parse --short HEAD)"
    if [[ -n $(git -C "$ROOT" status --porcelain) ]]; then
      KUBE_EVENT_GIT_COMMIT="$KUBE_EVENT_GIT_COMMIT-dirty"
    fi
  else
    echo "dist.sh: not a git checkout; --version will show no commit (set KUBE_EVENT_GIT_COMMIT)" >&2
    KUBE_EVENT_GIT_COMMIT=""
  fi
fi
export KUBE_EVENT_GIT_COMMIT

echo "== cargo build --release --locked --target $TARGET (commit ${KUBE_EVENT_GIT_COMMIT:-unknown})"
cargo build --release --locked --target "$TARGET"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release/kube-event"
[[ -f $BIN ]] || die "cargo did not produce $BIN"

# Cargo.toml's release profile strips; strip again in case a profile override did not.
if file -b "$BIN" | grep -q "not stripped"; then
  command -v strip >/dev/null 2>&1 || die "$BIN is not stripped and strip(1) is missing (binutils)"
  strip "$BIN"
fi

# --- Checks on the binary --------------------------------------------------------------------
INFO="$(file -b "$BIN")"
echo "== file: $INFO"
[[ $INFO == *static* ]] || die "$BIN is not statically linked: $INFO"
[[ $INFO != *"not stripped"* ]] || die "$BIN is not stripped: $INFO"
SIZE="$(stat -c %s "$BIN")"
((SIZE < MAX_BYTES)) || die "$BIN is $SIZE bytes, over the limit of $MAX_BYTES"
REPORTED="$("$BIN" --version)"
[[ $REPORTED == "kube-event $VERSION"* ]] || die "$BIN --version says \"$REPORTED\", expected kube-event $VERSION"
echo "== $REPORTED, $SIZE bytes"

# --- Layout ----------------------------------------------------------------------------------
mkdir -p "$ROOT/dist"
STAGE="$(mktemp -d "$ROOT/dist/.stage.XXXXXX")"
trap 'rm -rf "$STAGE"' EXIT
DIR="$STAGE/$NAME"
mkdir -p "$DIR/systemd" "$DIR/scripts"

install -m 0755 "$BIN" "$DIR/kube-event"
install -m 0755 start.sh stop.sh "$DIR/"
install -m 0755 scripts/make-kubeconfig.sh "$DIR/scripts/"
install -m 0644 systemd/kube-event.service "$DIR/systemd/"
install -m 0644 README.md "$DIR/"
cp -R deploy "$DIR/deploy"
chmod -R u=rwX,go=rX "$DIR/deploy"

# The sample conf with logging to a file switched on: the tarball's start.sh runs kube-event
# detached from any terminal, so stderr alone would be easy to lose.
grep -qx '# LOG_FILE=' kube-event.conf \
  || die "kube-event.conf has no line '# LOG_FILE=' to turn into LOG_FILE=logs/kube-event.log"
sed 's|^# LOG_FILE=$|LOG_FILE=logs/kube-event.log|' kube-event.conf >"$DIR/kube-event.conf"
chmod 0644 "$DIR/kube-event.conf"
[[ $(grep -cx 'LOG_FILE=logs/kube-event.log' "$DIR/kube-event.conf") -eq 1 ]] \
  || die "setting LOG_FILE in the tarball's kube-event.conf failed"

(
  cd "$DIR"
  find . -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 sha256sum >"$STAGE/SHA256SUMS"
  mv "$STAGE/SHA256SUMS" SHA256SUMS
  sha256sum --quiet -c SHA256SUMS
)

# Reproducible archive: sorted names, numeric root owner, mtime of the commit.
MTIME="@$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || date +%s)"
rm -f "$TARBALL"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="$MTIME" \
  -C "$STAGE" -cf - "$NAME" | gzip -9n >"$TARBALL.tmp"
mv "$TARBALL.tmp" "$TARBALL"

# --- Checks on the tarball -------------------------------------------------------------------
TOP="$(tar -tzf "$TARBALL" | cut -d/ -f1 | sort -u)"
[[ $TOP == "$NAME" ]] || die "$TARBALL does not unpack to the one folder $NAME/: $TOP"
for f in kube-event kube-event.conf start.sh stop.sh systemd/kube-event.service README.md SHA256SUMS; do
  tar -tzf "$TARBALL" "$NAME/$f" >/dev/null 2>&1 || die "$TARBALL lacks $NAME/$f"
done

echo
echo "tarball: $TARBALL"
echo "size:    $(stat -c %s "$TARBALL") bytes"
echo "sha256:  $(sha256sum "$TARBALL" | cut -d' ' -f1)"
