#!/bin/bash
# Where an exec storm's wall-time overhead comes from: the same loop of
# /bin/true untraced, traced, and traced with pmet stopped (SIGSTOP once it
# has started; the kernel side keeps running and its ring buffer holds the
# events, which pmet takes in when the loop is over and it is continued).
# The loop is timed inside the traced command, so pmet's start-up and exit
# are not in it. Rounds are interleaved; prints each mode's times (ms), their
# medians, and the lost events of the traced runs (must be 0: a ring that
# overflowed while pmet was stopped would make the stopped mode cheaper).
#
# usage: sudo contrib/overhead-split.sh [PMET] [ROUNDS] [EXECS]
set -eu
PMET=${1:-target/release/pmet}
ROUNDS=${2:-9}
N=${3:-2000}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
loop="sleep 0.5; s=\$(date +%s%N); i=0; while [ \$i -lt $N ]; do /bin/true; i=\$((i+1)); done; e=\$(date +%s%N); echo \$(( (e-s)/1000000 )) > $dir/t"
for _ in $(seq "$ROUNDS"); do
  for mode in untraced traced stopped; do
    lost=-
    case $mode in
      untraced) sh -c "$loop" ;;
      traced) "$PMET" trace -q -o "$dir/r.json" -- sh -c "$loop" ;;
      stopped)
        "$PMET" trace -q -o "$dir/r.json" -- sh -c "$loop; kill -CONT \$PPID" &
        pid=$!
        sleep 0.35
        kill -STOP "$pid"
        wait "$pid" ;;
    esac
    if [ "$mode" != untraced ]; then
      lost=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['collector']['lost_events'])" "$dir/r.json")
    fi
    echo "$mode $(cat "$dir/t") $lost"
  done
done | python3 -c '
import sys, statistics
t, lost = {}, {}
for line in sys.stdin:
    mode, ms, l = line.split()
    t.setdefault(mode, []).append(int(ms))
    lost.setdefault(mode, []).append(l)
for mode in ("untraced", "traced", "stopped"):
    print(f"{mode:9} median {statistics.median(t[mode]):.0f} ms: {t[mode]}  lost: {lost[mode]}")
'
