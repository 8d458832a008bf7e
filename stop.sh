#!/usr/bin/env bash
# stop.sh: stops the kube-event that start.sh started from this folder, from any current
# directory.
#
# Sends SIGTERM (kube-event stops watching, pushes what is queued for at most 10 s, exits)
# and waits up to STOP_TIMEOUT seconds (default 30) for it to exit; then SIGKILL with a
# warning (nothing is lost: what was not pushed is in the spool for the next start).
# Removes kube-event.pid. Exit status 0 also when nothing was running, 1 when it could not
# be stopped.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

PID_FILE=kube-event.pid
STOP_TIMEOUT="${STOP_TIMEOUT:-30}"

# True when $1 is a live (not zombie) process whose program is kube-event.
is_kube_event() {
  local pid=$1 stat argv0
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ ${stat%% *} != Z ]] || return 1
  argv0="$(tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | head -n 1)" || return 1
  [[ ${argv0##*/} == kube-event ]]
}

# Waits up to $2 seconds for pid $1 to be gone; true if it is.
wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while is_kube_event "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

if [[ ! -e $PID_FILE ]]; then
  echo "kube-event is not running (no $PID_FILE in $PWD)"
  exit 0
fi
pid="$(cat "$PID_FILE" 2>/dev/null || true)"
if ! is_kube_event "$pid"; then
  rm -f "$PID_FILE"
  echo "kube-event is not running (removed the stale $PID_FILE of pid ${pid:-?})"
  exit 0
fi

echo "stopping kube-event (pid $pid)"
kill -TERM "$pid" 2>/dev/null || true
if ! wait_gone "$pid" "$STOP_TIMEOUT"; then
  echo "stop.sh: warning: kube-event (pid $pid) did not exit within ${STOP_TIMEOUT}s of SIGTERM; sending SIGKILL (what it had not pushed stays in its spool for the next start)" >&2
  kill -KILL "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" 10; then
    echo "stop.sh: kube-event (pid $pid) is still there after SIGKILL" >&2
    exit 1
  fi
fi
rm -f "$PID_FILE"
echo "kube-event stopped"
