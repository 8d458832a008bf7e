#!/usr/bin/env bash
# The benchmark of kube-event (issue 6): the release binary, run as a user would, between a
# load generator that plays the API server over HTTPS and a sink that plays Loki, over real
# loopback sockets. Both are examples/bench.rs.
#
#   scripts/bench.sh [N]                       N events (default 200000), all modes
#   BENCH_MODES="storm cold" scripts/bench.sh  only some of: storm gzip cold drain floor
#   BENCH_KEEP=1 scripts/bench.sh              keep the work folder (logs, configs, outputs)
#   BENCH_COMPRESSION=gzip scripts/bench.sh    LOKI_COMPRESSION for every mode (default:
#                                              kube-event's default, snappy)
#   BENCH_RUNS=1 scripts/bench.sh              storms per storm mode (default 5: the median)
#
# Modes:
#   storm  an empty list, then one watch stream of N ADDED frames as fast as the generator
#          can send them: wall time from the watch request to the N-th entry accepted by the
#          sink, events/s, CPU µs per event (utime+stime of kube-event), peak RSS (VmHWM),
#          bytes pushed; then idle RSS and idle CPU over 10 s, from 6 s after the storm (after
#          the pusher's one-off idle trim). BENCH_RUNS storms, each with a fresh kube-event,
#          generator and sink: the medians of CPU and events/s with their ranges, the highest
#          peak RSS, and the last run in full.
#   gzip   the storm again with LOKI_COMPRESSION=gzip (JSON, gzipped), the other push encoding.
#   cold   the cluster holds N events: kube-event lists them (pages of 500) at startup;
#          from kube-event's start to the N-th entry accepted.
#   drain  Loki down (the sink answers 503) during a storm of N: kube-event spools them; it is
#          stopped (SIGTERM), Loki comes up, kube-event starts again: time to drain the spool.
#   floor  the generator alone, streaming the N frames to an in-process TLS client that drops
#          the bytes: what the generator can do at most on this machine.
set -euo pipefail

N=${1:-200000}
MODES=${BENCH_MODES:-storm gzip cold drain floor}
COMPRESSION=${BENCH_COMPRESSION:-snappy}
[[ $N =~ ^[0-9]+$ && $N -gt 0 ]] || { echo "usage: $0 [N]" >&2; exit 2; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# BENCH_BIN: another kube-event binary to measure (e.g. the static musl one of scripts/dist.sh).
BIN=${BENCH_BIN:-$TARGET/release/kube-event}
GEN=$TARGET/release/examples/bench
TOKEN=bench-$RANDOM$RANDOM
HZ=$(getconf CLK_TCK)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kube-event-bench.XXXXXX")
PIDS=()
cleanup() {
    local rc=$?
    for p in "${PIDS[@]}"; do
        kill -9 "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]}"; do
        wait "$p" 2>/dev/null || true
    done
    if [[ ${BENCH_KEEP:-0} == 1 || $rc -ne 0 ]]; then
        echo "work folder kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
    echo "bench: $*" >&2
    for f in "$WORK"/*/*.err "$WORK"/*/*.log; do
        [[ -s $f ]] && { echo "--- $f (last lines)" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}

# calc EXPR: floating-point arithmetic with awk.
calc() { awk "BEGIN { printf \"%s\", $1 }"; }
fmt() { awk -v v="$2" "BEGIN { printf \"$1\", v }"; }

# start NAME DIR CMD...: runs CMD in the background, stdout to DIR/NAME.out, stderr to
# DIR/NAME.err; its pid is in LAST_PID.
start() {
    local name=$1 dir=$2
    shift 2
    "$@" >"$dir/$name.out" 2>"$dir/$name.err" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# wait_line FILE REGEX SECONDS PID: polls FILE until a line matches, prints that line.
wait_line() {
    local file=$1 re=$2 secs=$3 pid=$4 line
    local deadline=$((SECONDS + secs))
    while :; do
        if line=$(grep -m1 -E "$re" "$file" 2>/dev/null); then
            echo "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || die "$(basename "$file" .out) (pid $pid) exited before printing /$re/"
        ((SECONDS < deadline)) || die "no /$re/ in $file after ${secs}s"
        sleep 0.05
    done
}

# field LINE KEY: the value of key=value in LINE.
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# "utime stime minflt": CPU in clock ticks, and minor page faults.
user_sys() { awk '{ print $14, $15, $10 }' "/proc/$1/stat"; }
status_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
# CPU time of all live threads in ns (schedstat: finer than clock ticks, for the idle figure).
sched_ns() { cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $1 } END { printf "%d", s }'; }
now_ns() { date +%s%N; }

# stop PID SECONDS: SIGTERM, then waits for the exit (SIGKILL after SECONDS). STOPPED says how.
stop() {
    local pid=$1 secs=$2 t0
    t0=$(now_ns)
    STOPPED="already gone"
    kill -TERM "$pid" 2>/dev/null || return 0
    local deadline=$((SECONDS + secs))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -9 "$pid" 2>/dev/null || true
        STOPPED="still running after ${secs}s: killed"
    else
        STOPPED="exited after $(fmt %.2f "$(calc "($(now_ns) - $t0) / 1e9")") s"
    fi
    wait "$pid" 2>/dev/null || true
}

# sink DIR [ARGS...]: starts the Loki sink expecting N entries; SINK_PID, LOKI_PORT.
sink() {
    local dir=$1
    shift
    start loki "$dir" "$GEN" loki --expect "$N" "$@"
    SINK_PID=$LAST_PID
    LOKI_PORT=$(wait_line "$dir/loki.out" '^READY ' 10 "$SINK_PID" | cut -d' ' -f2)
}

# apiserver DIR MODE: starts the generator; API_PID, API_PORT.
apiserver() {
    local dir=$1 mode=$2
    start api "$dir" "$GEN" apiserver --mode "$mode" --events "$N" --dir "$dir/pki" --token "$TOKEN"
    API_PID=$LAST_PID
    API_PORT=$(wait_line "$dir/api.out" '^READY ' 120 "$API_PID" | cut -d' ' -f2)
}

# configure DIR [COMPRESSION]: kubeconfig + kube-event.conf for the running generator and sink.
configure() {
    local dir=$1 compression=${2:-$COMPRESSION}
    cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bench
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $dir/pki/ca.crt
users:
- name: bench
  user:
    token: $TOKEN
contexts:
- name: bench
  context:
    cluster: bench
    user: bench
current-context: bench
EOF
    cat >"$dir/kube-event.conf" <<EOF
LOKI_URL=http://127.0.0.1:$LOKI_PORT
KUBECONFIG=$dir/kubeconfig
PUSH_INTERVAL_SECONDS=1
BATCH_MAX_BYTES=1048576
LOKI_COMPRESSION=$compression
DATA_DIR=$dir/data
LOG_LEVEL=warn
EOF
}

# kube_event DIR NAME: starts kube-event (clean environment: no LOKI_*, RUST_LOG...); KE_PID.
kube_event() {
    local dir=$1 name=$2
    start "$name" "$dir" env -i PATH="$PATH" HOME="$dir" "$BIN" --config "$dir/kube-event.conf"
    KE_PID=$LAST_PID
}

# done_line DIR PID: waits for the sink's DONE line (N entries accepted).
done_line() { wait_line "$1/loki.out" '^DONE ' "${BENCH_TIMEOUT:-150}" "$2"; }

# report T0_NS DONE_LINE CPU_TICKS HWM_KB [DIR]: the common figures; with DIR also when 99 % of
# the entries were in (the last batch goes once the stream has paused for 0.1 s, queue::QUIET).
report() {
    local t0=$1 dl=$2 hwm=$4 user sys faults t1 secs cpu
    read -r user sys faults <<<"$3"
    cpu=$((user + sys))
    t1=$(cut -d' ' -f2 <<<"$dl")
    secs=$(calc "($t1 - $t0) / 1e9")
    printf '  %-34s %s s\n' "wall time" "$(fmt %.3f "$secs")"
    printf '  %-34s %s\n' "events/s" "$(fmt %.0f "$(calc "$N / $secs")")"
    if [[ -n ${5:-} ]]; then
        local t99
        t99=$(awk -v n="$N" '$1 == "PUSH" { split($3, a, "="); if (a[2] >= 0.99 * n) { print $2; exit } }' "$5/loki.out")
        printf '  %-34s %s s (%s events/s)\n' "99 % of the entries in" \
            "$(fmt %.3f "$(calc "($t99 - $t0) / 1e9")")" "$(fmt %.0f "$(calc "0.99 * $N / (($t99 - $t0) / 1e9)")")"
    fi
    printf '  %-34s %s µs  (%s ticks of 1/%s s: user %s, sys %s)\n' "CPU per event (user+sys)" \
        "$(fmt %.2f "$(calc "$cpu / $HZ * 1e6 / $N")")" "$cpu" "$HZ" "$user" "$sys"
    printf '  %-34s %s MB  (%s kB)\n' "peak RSS (VmHWM)" "$(fmt %.1f "$(calc "$hwm / 1024")")" "$hwm"
    printf '  %-34s %s (%s per 1,000 events)\n' "minor page faults" "$faults" \
        "$(fmt %.1f "$(calc "$faults * 1000 / $N")")"
}

bytes_line() {
    local dl=$1 comp unc
    comp=$(field "$dl" compressed)
    unc=$(field "$dl" uncompressed)
    printf '  %-34s %s MB compressed, %s MB uncompressed (%s B/entry, ratio %s), %s pushes\n' \
        "pushed" "$(fmt %.1f "$(calc "$comp / 1e6")")" "$(fmt %.1f "$(calc "$unc / 1e6")")" \
        "$(fmt %.0f "$(calc "$unc / $N")")" "$(fmt %.1f "$(calc "$unc / $comp")")" \
        "$(field "$dl" pushes)"
}

# The CPU the generator and the sink used since others_start (they share the cores with
# kube-event; the generator's rendering of the events before READY is not counted).
others_start() {
    API_T0=$(ticks "$API_PID")
    SINK_T0=$(ticks "$SINK_PID")
}
others() {
    printf '  %-34s generator %s s, sink %s s\n' "CPU of the other processes" \
        "$(fmt %.2f "$(calc "($(ticks "$API_PID") - $API_T0) / $HZ")")" \
        "$(fmt %.2f "$(calc "($(ticks "$SINK_PID") - $SINK_T0) / $HZ")")"
}

entries_now() { tail -n1 "$1/loki.out" | tr ' ' '\n' | sed -n 's/^entries=//p'; }

check_count() {
    local got
    got=$(entries_now "$1")
    if [[ $got != "$N" ]]; then
        printf '  %-34s %s (expected %s)\n' "WARNING: entries received" "$got" "$N"
    fi
}

warnings() {
    local f=$1
    if [[ -s $f ]]; then
        printf '  kube-event logged %s line(s) at warn or above, e.g.: %s\n' \
            "$(wc -l <"$f")" "$(head -c 200 "$f" | head -n1)"
    fi
}

kill_pid() {
    kill -9 "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------


# The end of every mode: the entry count, a SIGTERM (timed), the log's warnings, and the
# generator and the sink stopped. $1: the mode's folder, $2: kube-event's log to scan.
finish_mode() {
    check_count "$1"
    stop "$KE_PID" 20
    printf '  %-34s %s\n' "stopped (SIGTERM)" "$STOPPED"
    warnings "$2"
    kill_pid "$API_PID"
    kill_pid "$SINK_PID"
}
# storm_run DIR COMPRESSION: one storm, up to the N-th entry accepted. Sets the run's figures:
# RUN_CPU (µs per event), RUN_RATE (events/s when 99 % were in), RUN_END (events/s to the N-th
# entry), RUN_HWM (kB), RUN_LINE (the done line), RUN_WATCH (the watch request, ns), RUN_USF
# ("user sys faults") and RUN_TRIM0.
storm_run() {
    local d=$1 compression=$2 t99
    mkdir -p "$d"
    sink "$d"
    apiserver "$d" storm
    configure "$d" "$compression"
    others_start
    kube_event "$d" kube-event
    RUN_LINE=$(done_line "$d" "$KE_PID")
    RUN_USF=$(user_sys "$KE_PID")
    # CPU from here to the idle window: the pusher's idle trim, 5 s after its last push.
    RUN_TRIM0=$(sched_ns "$KE_PID")
    RUN_HWM=$(status_kb "$KE_PID" VmHWM)
    RUN_WATCH=$(grep -m1 '^WATCH ' "$d/api.out" | cut -d' ' -f2)
    RUN_CPU=$(awk -v t="$RUN_USF" -v hz="$HZ" -v n="$N" \
        'BEGIN { split(t, a, " "); printf "%.2f", (a[1] + a[2]) / hz * 1e6 / n }')
    t99=$(awk -v n="$N" '$1 == "PUSH" { split($3, a, "="); if (a[2] >= 0.99 * n) { print $2; exit } }' "$d/loki.out")
    RUN_RATE=$(fmt %.0f "$(calc "0.99 * $N / (($t99 - $RUN_WATCH) / 1e9)")")
    RUN_END=$(fmt %.0f "$(calc "$N / (($(cut -d' ' -f2 <<<"$RUN_LINE") - $RUN_WATCH) / 1e9)")")
}

# median V...: the middle value (the lower of the two middle ones for an even count).
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
range() { printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%s-%s", lo, hi }'; }

# The storm, BENCH_RUNS times (default 5): the CPU figure moves by a third or more between runs of
# the same binary on this VM (other tenants), so the median is the figure, with the range. Every
# run but the last stops at its N-th entry; the last is reported in full, with the idle window.
mode_storm() {
    local compression=${1:-$COMPRESSION} d=$WORK/storm-${1:-$COMPRESSION}
    local runs=${BENCH_RUNS:-5} r cpus=() rates=() ends=() hwms=()
    [[ $runs =~ ^[0-9]+$ && $runs -gt 0 ]] || die "BENCH_RUNS must be a positive number"
    echo "== storm: one watch stream of $N events, LOKI_COMPRESSION=$compression, $runs run(s)"
    for ((r = 1; r <= runs; r++)); do
        storm_run "$d/run-$r" "$compression"
        cpus+=("$RUN_CPU") rates+=("$RUN_RATE") ends+=("$RUN_END") hwms+=("$RUN_HWM")
        if ((runs > 1)); then
            printf '  %-34s %s µs per event (user %s, sys %s ticks), 99 %% in at %s events/s, peak RSS %s MB\n' \
                "run $r of $runs" "$RUN_CPU" "$(cut -d' ' -f1 <<<"$RUN_USF")" "$(cut -d' ' -f2 <<<"$RUN_USF")" \
                "$RUN_RATE" "$(fmt %.1f "$(calc "$RUN_HWM / 1024")")"
        fi
        ((r == runs)) && break
        check_count "$d/run-$r"
        stop "$KE_PID" 20
        warnings "$d/run-$r/kube-event.err"
        kill_pid "$API_PID"
        kill_pid "$SINK_PID"
    done
    if ((runs > 1)); then
        printf '  %-34s %s µs per event, the median of %s runs (%s)\n' "CPU (user+sys)" \
            "$(median "${cpus[@]}")" "$runs" "$(range "${cpus[@]}")"
        printf '  %-34s %s events/s, the median of %s runs (%s)\n' "99 % of the entries in" \
            "$(median "${rates[@]}")" "$runs" "$(range "${rates[@]}")"
        printf '  %-34s %s events/s, the median of %s runs (%s)\n' "to the last entry" \
            "$(median "${ends[@]}")" "$runs" "$(range "${ends[@]}")"
        printf '  %-34s %s MB, the highest of %s runs\n' "peak RSS (VmHWM)" \
            "$(fmt %.1f "$(calc "$(printf '%s\n' "${hwms[@]}" | sort -g | tail -n1) / 1024")")" "$runs"
        echo "  the last run:"
    fi
    d=$d/run-$runs
    report "$RUN_WATCH" "$RUN_LINE" "$RUN_USF" "$RUN_HWM" "$d"
    bytes_line "$RUN_LINE"
    others
    local streamed trim0=$RUN_TRIM0
    streamed=$(grep -m1 '^STREAMED ' "$d/api.out" || true)
    if [[ -n $streamed ]]; then
        printf '  %-34s %s s after the watch request\n' "generator done sending" \
            "$(fmt %.3f "$(calc "($(cut -d' ' -f2 <<<"$streamed") - $RUN_WATCH) / 1e9")")"
    fi
    # Idle: the steady state after the storm. 5 s after its last push the pusher hands the
    # storm's buffers back and refits the memory of shipped events (a one-off pass, a few ms
    # for 200,000 events); from 6 s on, once kube-event's CPU time stops moving (at most 15 s
    # more), a 10 s window.
    sleep 6 # past the pusher's idle trim (IDLE_TRIM, 5 s): a protocol step, not a synchronization
    local prev cur deadline=$((SECONDS + 15))
    prev=$(ticks "$KE_PID")
    while ((SECONDS < deadline)); do
        sleep 0.5
        cur=$(ticks "$KE_PID")
        [[ $cur == "$prev" ]] && break
        prev=$cur
    done
    local t0 s0 c0 t1 s1 c1
    t0=$(now_ns) s0=$(sched_ns "$KE_PID") c0=$(ticks "$KE_PID")
    sleep 10 # the measurement window, not a synchronization
    t1=$(now_ns) s1=$(sched_ns "$KE_PID") c1=$(ticks "$KE_PID")
    printf '  %-34s %s ms of CPU (the idle trim, and the end of the storm)\n' "before the idle window" \
        "$(fmt %.1f "$(calc "($s0 - $trim0) / 1e6")")"
    printf '  %-34s %s MB  (%s kB: anonymous %s, file %s)\n' "idle RSS (VmRSS)" \
        "$(fmt %.1f "$(calc "$(status_kb "$KE_PID" VmRSS) / 1024")")" "$(status_kb "$KE_PID" VmRSS)" \
        "$(status_kb "$KE_PID" RssAnon)" "$(status_kb "$KE_PID" RssFile)"
    # With BENCH_KEEP=1, the mappings behind that figure, for a closer look.
    [[ ${BENCH_KEEP:-0} == 1 ]] && cat "/proc/$KE_PID/smaps" >"$d/idle.smaps"
    printf '  %-34s %s %%  (%s ticks in %s s; schedstat %s %%)\n' "idle CPU" \
        "$(fmt %.3f "$(calc "($c1 - $c0) / $HZ / (($t1 - $t0) / 1e9) * 100")")" "$((c1 - c0))" \
        "$(fmt %.1f "$(calc "($t1 - $t0) / 1e9")")" \
        "$(fmt %.4f "$(calc "($s1 - $s0) / ($t1 - $t0) * 100")")"
    finish_mode "$d" "$d/kube-event.err"
}

mode_cold() {
    local d=$WORK/cold
    mkdir -p "$d"
    echo "== cold start: list of $N events (pages of 500), LOKI_COMPRESSION=$COMPRESSION"
    sink "$d"
    apiserver "$d" cold
    configure "$d"
    local t0 dl cpu hwm first
    others_start
    t0=$(now_ns)
    kube_event "$d" kube-event
    dl=$(done_line "$d" "$KE_PID")
    cpu=$(user_sys "$KE_PID")
    hwm=$(status_kb "$KE_PID" VmHWM)
    report "$t0" "$dl" "$cpu" "$hwm" "$d"
    others
    first=$(grep -m1 '^LIST ' "$d/api.out" | cut -d' ' -f2)
    printf '  %-34s %s s (first list request to last entry: %s s)\n' "startup to first list request" \
        "$(fmt %.3f "$(calc "($first - $t0) / 1e9")")" \
        "$(fmt %.3f "$(calc "($(cut -d' ' -f2 <<<"$dl") - $first) / 1e9")")"
    bytes_line "$dl"
    finish_mode "$d" "$d/kube-event.err"
}

# The entries in the spool, from the batch headers ("KUBE-EVENT BATCH 3 <seq> <entries> ..."; versions 1 and 2 alike).
spooled() {
    local files
    shopt -s nullglob
    files=("$1"/*.batch)
    shopt -u nullglob
    if ((${#files[@]} == 0)); then
        echo 0
        return
    fi
    awk 'FNR == 1 { if ($1 == "KUBE-EVENT" && $2 == "BATCH") s += $5; nextfile } END { print s + 0 }' "${files[@]}"
}

mode_drain() {
    local d=$WORK/drain
    mkdir -p "$d"
    echo "== spool drain: $N events spooled while Loki was down, then a restart, LOKI_COMPRESSION=$COMPRESSION"
    sink "$d" --down-until "$d/loki-up"
    apiserver "$d" storm
    configure "$d"
    local t0 n deadline=$((SECONDS + ${BENCH_TIMEOUT:-150}))
    t0=$(now_ns)
    kube_event "$d" kube-event-1
    local ke1=$KE_PID
    while :; do
        n=$(spooled "$d/data/spool")
        [[ $n -ge $N ]] && break
        kill -0 "$ke1" 2>/dev/null || die "kube-event exited while spooling"
        ((SECONDS < deadline)) || die "only $n of $N entries spooled after ${BENCH_TIMEOUT:-150}s"
        sleep 0.1
    done
    printf '  %-34s %s s (%s entries, %s MB in %s files)\n' "spooled (Loki answering 503)" \
        "$(fmt %.2f "$(calc "($(now_ns) - $t0) / 1e9")")" "$n" \
        "$(du -sm "$d/data/spool" | cut -f1)" "$(find "$d/data/spool" -name '*.batch' | wc -l)"
    stop "$ke1" 30
    printf '  %-34s %s\n' "stopped (SIGTERM, Loki still down)" "$STOPPED"
    [[ $(spooled "$d/data/spool") -ge $N ]] || die "the spool lost entries at the stop"
    touch "$d/loki-up"
    local dl cpu hwm
    t0=$(now_ns)
    kube_event "$d" kube-event-2
    dl=$(done_line "$d" "$KE_PID")
    cpu=$(user_sys "$KE_PID")
    hwm=$(status_kb "$KE_PID" VmHWM)
    report "$t0" "$dl" "$cpu" "$hwm" "$d"
    bytes_line "$dl"
    finish_mode "$d" "$d/kube-event-2.err"
}

mode_floor() {
    local d=$WORK/floor
    mkdir -p "$d"
    echo "== floor: the generator streaming $N frames over TLS to an in-process client that drops them"
    "$GEN" floor --events "$N" --runs 3 >"$d/floor.out" 2>"$d/floor.err" || die "floor failed"
    grep '^FLOOR' "$d/floor.out" | sed 's/^/  /'
}

# ---------------------------------------------------------------------------------------------

echo "== build"
cargo build --release --quiet
cargo build --release --examples --quiet
[[ -x $BIN && -x $GEN ]] || die "missing $BIN or $GEN"

echo "== machine"
printf '  %-34s %s\n' "cpu" "$(nproc) × $(uname -m), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
printf '  %-34s %s\n' "kernel" "$(uname -r)"
printf '  %-34s %s\n' "memory" "$(awk '/^MemTotal/ { printf "%.1f GB", $2 / 1048576 }' /proc/meminfo)"
printf '  %-34s %s\n' "kube-event" "$("$BIN" --version 2>/dev/null | head -n1)"
printf '  %-34s %s bytes (%s MB)\n' "binary size" "$(stat -c %s "$BIN")" \
    "$(fmt %.2f "$(calc "$(stat -c %s "$BIN") / 1048576")")"
printf '  %-34s %s\n' "events" "$N"

for m in $MODES; do
    case $m in
    storm | cold | drain | floor) "mode_$m" ;;
    gzip) mode_storm gzip ;;
    *) die "unknown mode $m (storm gzip cold drain floor)" ;;
    esac
done
