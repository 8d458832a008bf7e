#!/usr/bin/env bash
# start.sh: starts kube-event from this folder (the unpacked release tarball), from any
# current directory.
#
#   ./start.sh               in the background, detached from the terminal; waits until it is up
#   ./start.sh --foreground  in this terminal (Ctrl-C stops it)
#
# The background copy runs `./kube-event --config ./kube-event.conf` in its own session, with
# its pid in kube-event.pid (stop it with ./stop.sh) and its stdout/stderr appended to
# logs/kube-event.out, so that even a failure before logging starts (a bad config value) is
# kept. Its log is LOG_FILE when kube-event.conf or the environment sets it, else that same
# logs/kube-event.out.
#
# Exit status: 0 when kube-event is up, or still starting after START_TIMEOUT seconds
# (default 30; a slow API server is not a failure: the log tells how it goes); 1 when it
# exited during startup (the last log lines are printed) or is already running; 2 on a usage
# error.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"

BIN=./kube-event
CONF=./kube-event.conf
PID_FILE=kube-event.pid
OUT=logs/kube-event.out
UP_LINE="kube-event is up"
START_TIMEOUT="${START_TIMEOUT:-30}"

usage() {
  echo "usage: $0 [--foreground]" >&2
  exit 2
}

foreground=false
case $# in
  0) ;;
  1) if [[ $1 == --foreground ]]; then foreground=true; else usage; fi ;;
  *) usage ;;
esac

[[ -x $BIN ]] || { echo "start.sh: $PWD/kube-event is missing or not executable" >&2; exit 1; }
[[ -f $CONF ]] || { echo "start.sh: $PWD/kube-event.conf is missing" >&2; exit 1; }

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

# The value of KEY as kube-event sees it: the environment if set (even empty), else the last
# KEY=... line of kube-event.conf with quotes or a trailing " # comment" removed.
conf_value() {
  local key=$1 line value
  if [[ -n ${!key+set} ]]; then
    printf '%s' "${!key}"
    return
  fi
  line="$(grep -E "^[[:space:]]*(export[[:space:]]+)?${key}[[:space:]]*=" "$CONF" | tail -n 1)" || true
  value="$(printf '%s' "${line#*=}" | sed -E 's/^[[:space:]]+//')"
  case $value in
    \"*) value="${value#\"}"; value="${value%%\"*}" ;;
    \'*) value="${value#\'}"; value="${value%%\'*}" ;;
    *) value="$(printf '%s' "$value" | sed -E 's/[[:space:]]+#.*$//; s/[[:space:]]+$//')" ;;
  esac
  printf '%s' "$value"
}

if [[ -e $PID_FILE ]]; then
  old="$(cat "$PID_FILE" 2>/dev/null || true)"
  if is_kube_event "$old"; then
    echo "start.sh: kube-event is already running (pid $old); stop it first with $PWD/stop.sh" >&2
    exit 1
  fi
  echo "start.sh: removing stale $PID_FILE (pid ${old:-?} is not a running kube-event)"
  rm -f "$PID_FILE"
fi

if $foreground; then
  echo $$ >"$PID_FILE"
  exec "$BIN" --config "$CONF"
fi

mkdir -p logs
LOG="$(conf_value LOG_FILE)"
LOG="${LOG:-$OUT}"
[[ $LOG == /* ]] || LOG="$PWD/$LOG"
OUT="$PWD/$OUT"

# Where each file ends now (and which file it is: kube-event may rotate LOG_FILE at start),
# so that only what this start writes is read.
mark() { stat -c '%i %s' "$1" 2>/dev/null || echo "- 0"; }
log_mark="$(mark "$LOG")"
out_mark="$(mark "$OUT")"
# Prints what was written to $1 since its mark $2.
since() {
  local file=$1 inode=${2% *} size=${2#* }
  [[ -f $file ]] || return 0
  [[ $(stat -c %i "$file") == "$inode" ]] || size=0
  tail -c +"$((size + 1))" "$file"
}

# setsid: a session of its own, so that closing the terminal (SIGHUP) does not stop it. The
# shell in between writes its own pid and then becomes kube-event (exec), which gives the
# right pid whether or not setsid had to fork.
# shellcheck disable=SC2016 # $$ and $0..$2 are for that inner shell
setsid sh -c 'echo $$ >"$0.new" && mv "$0.new" "$0" && exec "$1" --config "$2"' \
  "$PID_FILE" "$BIN" "$CONF" </dev/null >>"$OUT" 2>&1 &
launcher=$!

deadline=$((SECONDS + 5))
until [[ -s $PID_FILE ]]; do
  if ! kill -0 "$launcher" 2>/dev/null && [[ ! -s $PID_FILE ]]; then
    echo "start.sh: kube-event could not be started; $OUT says:" >&2
    since "$OUT" "$out_mark" | tail -n 20 >&2
    exit 1
  fi
  ((SECONDS < deadline)) || { echo "start.sh: no pid from the starting kube-event" >&2; exit 1; }
  sleep 0.1
done
pid="$(cat "$PID_FILE")"

# Waits for the line kube-event logs once its first list of events succeeded (info level).
deadline=$((SECONDS + START_TIMEOUT))
while :; do
  if since "$LOG" "$log_mark" | grep -qF "$UP_LINE"; then
    echo "kube-event is up (pid $pid); log: $LOG"
    exit 0
  fi
  if ! is_kube_event "$pid"; then
    how="exited"
    # Its exit code is ours to collect when setsid did not fork (the usual case in a script).
    if [[ $pid == "$launcher" ]]; then
      if wait "$pid" 2>/dev/null; then how="exited with code 0"; else how="exited with code $?"; fi
    fi
    echo "start.sh: kube-event (pid $pid) $how while starting; last log lines:" >&2
    if [[ $LOG != "$OUT" ]]; then
      echo "--- $LOG" >&2
      since "$LOG" "$log_mark" | tail -n 20 >&2
      echo "--- $OUT" >&2
    fi
    since "$OUT" "$out_mark" | tail -n 20 >&2
    [[ $(cat "$PID_FILE" 2>/dev/null) != "$pid" ]] || rm -f "$PID_FILE"
    exit 1
  fi
  if ((SECONDS >= deadline)); then
    echo "kube-event is still starting after ${START_TIMEOUT}s (pid $pid): no \"$UP_LINE\" yet"
    echo "(it logs that line at info level once the first list of events succeeded); log: $LOG"
    exit 0
  fi
  sleep 0.2
done
