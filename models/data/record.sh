#!/bin/bash
# Records the training and test recordings of models/: real programs on this machine,
# captured by `umbra record` (run as root). Driven by `cargo xtask record-training`, which
# builds umbra in release mode first and exports the recordings afterwards.
#
#   models/data/record.sh [--umbra PATH] [--out DIR] [--scale F] [--only NAME,...] [--list]
#
# Every segment is one recording: NAME.umbra in DIR (default target/training-recordings),
# with a line of provenance appended to DIR/provenance.jsonl. Parameters come from a
# per-segment seed through a small LCG, so a re-recording has the same shapes (phases,
# rates, sizes, levels) though not the same bytes. --scale shortens every segment (e.g. 0.1
# for a quick try). Everything else running on the host is in the recordings too; record
# on a quiet machine (load is noted in the provenance).
set -euo pipefail
SCRIPT_VERSION=1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
UMBRA="$ROOT/target/release/umbra"
OUT="$ROOT/target/training-recordings"
SCALE=1
ONLY=""
LIST=0
while [ $# -gt 0 ]; do
    case "$1" in
    --umbra) UMBRA=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --scale) SCALE=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --list) LIST=1; shift ;;
    *) echo "record.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# name set seed seconds driver uses: `all` recordings train and test both models,
# `requests` ones the per-request model only (the forecaster never sees them).
SEGMENTS="
steps       train 11 300 steps           all
daily       train 12 360 daily           all
web         train 13 300 web             all
db          train 14 240 db              all
compile     train 15 240 compile         all
requests    train 16 600 requests        requests
test-steps  test  21 150 steps           all
test-daily  test  22 300 daily_unseen    all
test-web    test  23 180 web             all
test-requests test 24 300 requests_unseen requests
"
if [ "$LIST" = 1 ]; then echo "$SEGMENTS" | sed '/^$/d'; exit 0; fi
[ "$(id -u)" = 0 ] || { echo "record.sh: umbra record needs root" >&2; exit 1; }
[ -x "$UMBRA" ] || { echo "record.sh: no umbra at $UMBRA (cargo build --release -p umbra)" >&2; exit 1; }

# The programs recorded (only recording needs them).
need=""
for p in nginx wrk postgresql stress-ng xz-utils zstd gzip bzip2 coreutils gcc make openssl; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -q '^installed$' || need="$need $p"
done
if [ -n "$need" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
fi

mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/umbra-training.XXXXXX)
chmod 755 "$WORK"
PG=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
cleanup() {
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    [ -d "$WORK/pg/data" ] && runuser -u postgres -- "$PG/pg_ctl" -D "$WORK/pg/data" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# A seeded LCG: `rnd N` sets R to a number in [0, N).
SEED=1
rnd() { SEED=$(( (SEED * 1103515245 + 12345) % 2147483648 )); R=$(( (SEED / 65536) % $1 )); }
now() { date +%s; }
pick() { rnd $#; shift "$R"; P=$1; }

# --- drivers: each runs until $END (epoch seconds) -------------------------------------

# Step loads: stress-ng phases of 20-65 s, each with 0-2 CPU workers at 25-100% and a
# 0-1 GiB memory stressor that keeps its pages.
steps() {
    while [ "$(now)" -lt "$END" ]; do
        rnd 4; local phase=$(( 20 + R * 15 ))
        local left=$(( END - $(now) )); [ "$phase" -gt "$left" ] && phase=$left
        [ "$phase" -le 0 ] && break
        rnd 3; local cpus=$R
        pick 25 50 75 100; local load=$P
        pick 0 64 256 512 1024; local mem=$P
        local args=""
        [ "$cpus" -gt 0 ] && args="--cpu $cpus --cpu-load $load"
        [ "$mem" -gt 0 ] && args="$args --vm 1 --vm-bytes ${mem}M --vm-keep"
        if [ -z "$args" ]; then sleep "$phase"; else
            stress-ng $args --timeout "${phase}s" --quiet || true
        fi
    done
}

# A periodic job with a daily cycle compressed in time: a "day" of 24 five-second
# "hours"; each hour the job compresses and hashes an amount of data that follows the day
# (low at night, a peak in the afternoon), with seeded noise.
HOURS="2 2 2 2 3 4 8 14 22 30 36 40 42 40 36 32 30 26 20 14 9 6 4 3"
daily_job() { # MB
    head -c "${1}M" "$WORK/in/text-256" | gzip -5 | sha256sum >/dev/null
}
daily_unseen_job() { # MB: a program the training recordings never ran
    head -c "${1}M" "$WORK/in/text-256" | bzip2 -1 | b2sum >/dev/null
}
daily_loop() { # JOB
    local h=0
    while [ "$(now)" -lt "$END" ]; do
        local slot_end=$(( $(now) + 5 ))
        set -- $HOURS; shift "$h"; local mb=$1
        rnd 5; mb=$(( mb + R - 2 )); [ "$mb" -lt 1 ] && mb=1
        "$JOB" "$mb"
        while [ "$(now)" -lt "$slot_end" ]; do sleep 0.2; done
        h=$(( (h + 1) % 24 ))
    done
}
daily() { JOB=daily_job daily_loop; }
daily_unseen() { JOB=daily_unseen_job daily_loop; }

# nginx under wrk: the request rate rises and falls (raised cosine, seeded period and peak),
# wrk paced by a Lua delay so the offered rate follows it; 5 s per rate.
web() {
    mkdir -p "$WORK/www"
    head -c 15000 /dev/urandom | base64 > "$WORK/www/index.html"
    head -c 700 /dev/urandom | base64 > "$WORK/www/small.html"
    cat > "$WORK/nginx.conf" <<N
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 512; }
http { access_log off; server { listen 127.0.0.1:18080; root $WORK/www; } }
N
    cat > "$WORK/delay.lua" <<'L'
local d = tonumber(os.getenv("WRK_DELAY_MS"))
local paths = {"/index.html", "/small.html"}
local i = 0
function delay() return d end
function request() i = i + 1; return wrk.format(nil, paths[i % 2 + 1]) end
L
    nginx -c "$WORK/nginx.conf"
    rnd 60; local period=$(( 120 + R ))
    rnd 2000; local peak=$(( 1500 + R ))
    local low=40 t0; t0=$(now)
    while [ "$(now)" -lt "$END" ]; do
        local t=$(( $(now) - t0 ))
        # raised cosine in integer arithmetic via awk
        local rate; rate=$(awk -v t="$t" -v p="$period" -v lo="$low" -v hi="$peak" \
            'BEGIN { printf "%d", lo + (hi - lo) * (1 - cos(6.283185307 * t / p)) / 2 }')
        rnd 21; rate=$(( rate * (90 + R) / 100 ))
        local conns=16 delay=$(( 16 * 1000 / (rate > 1 ? rate : 1) ))
        [ "$delay" -lt 1 ] && delay=1
        WRK_DELAY_MS=$delay wrk -t1 -c"$conns" -d5s -s "$WORK/delay.lua" \
            http://127.0.0.1:18080/ >/dev/null 2>&1 || true
    done
    kill "$(cat "$WORK/nginx.pid")"; rm -f "$WORK/nginx.pid"
}

# PostgreSQL under pgbench: TPC-B-like transactions at a rate that rises and falls in
# seeded steps of 10 s.
db_setup() {
    mkdir -p "$WORK/pg"; chown postgres: "$WORK/pg"
    runuser -u postgres -- "$PG/initdb" -D "$WORK/pg/data" -A trust >/dev/null
    runuser -u postgres -- "$PG/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
        -o "-p 15432 -k $WORK/pg -c listen_addresses=''" start >/dev/null
    runuser -u postgres -- "$PG/pgbench" -h "$WORK/pg" -p 15432 -i -s 8 -q postgres >/dev/null 2>&1
}
db() {
    local rate=50
    while [ "$(now)" -lt "$END" ]; do
        pick -150 -80 0 80 150 250; rate=$(( rate + P ))
        [ "$rate" -lt 20 ] && rate=20; [ "$rate" -gt 900 ] && rate=900
        rnd 3; local clients=$(( 2 + R * 2 ))
        runuser -u postgres -- "$PG/pgbench" -h "$WORK/pg" -p 15432 -c "$clients" -j 2 \
            -T 10 -R "$rate" postgres >/dev/null 2>&1 || true
    done
}
db_teardown() {
    runuser -u postgres -- "$PG/pg_ctl" -D "$WORK/pg/data" -m fast stop >/dev/null 2>&1 || true
}

# Compile jobs: a generated C project (seeded size) built with make -j1 or -j2, a build
# every 5-25 s.
compile_setup() {
    mkdir -p "$WORK/src"
    for i in $(seq 1 32); do
        {
            echo "#include <math.h>"
            for f in $(seq 1 60); do
                echo "double f${i}_$f(double x, int n) { double s = 0; for (int k = 1; k < n; k++) { s += sin(x * k) / (k + $f); if (s > $i) s -= cos(s * $f); } return s; }"
            done
        } > "$WORK/src/m$i.c"
    done
}
compile() {
    while [ "$(now)" -lt "$END" ]; do
        pick 4 8 16 32; local n=$P
        pick 1 2; local j=$P
        pick -O0 -O1 -O2; local opt=$P
        local objs=""; for i in $(seq 1 "$n"); do objs="$objs m$i.o"; done
        printf 'CFLAGS=%s\nall: lib.a\nlib.a:%s\n\tar rcs $@ $^\n%%.o: %%.c\n\t$(CC) $(CFLAGS) -c $< -o $@\nclean:\n\trm -f *.o lib.a\n' \
            "$opt" "$objs" > "$WORK/src/Makefile"
        make -s -C "$WORK/src" clean >/dev/null
        make -s -C "$WORK/src" -j"$j" >/dev/null 2>&1 || true
        rnd 21; local rest=$(( 5 + R ))
        local left=$(( END - $(now) )); [ "$rest" -gt "$left" ] && rest=$left
        [ "$rest" -gt 0 ] && sleep "$rest"
    done
}

# Compressors and hashers run again and again over inputs of 1-256 MB (two kinds of
# content: base64 text and highly repetitive logs), levels and threads from argv; two
# loops at once on the two cores. The input is always named in argv.
SIZES="1 2 3 5 8 12 16 24 32 48 64 96 128 192 256"
inputs_setup() {
    mkdir -p "$WORK/in"
    openssl enc -aes-128-ctr -pass pass:umbra -nosalt -pbkdf2 </dev/zero 2>/dev/null \
        | head -c 256M | base64 -w 76 | head -c 256M > "$WORK/in/text-256" || true
    yes 'GET /api/v1/items?id=42 200 0.004 "Mozilla/5.0 (X11; Linux x86_64)"' \
        | head -c 256M > "$WORK/in/logs-256" || true
    for s in $SIZES; do
        [ "$s" = 256 ] && continue
        head -c "${s}M" "$WORK/in/text-256" > "$WORK/in/text-$s"
        head -c "${s}M" "$WORK/in/logs-256" > "$WORK/in/logs-$s"
    done
}
one_request() { # PROGRAMS...
    pick "$@"; local prog=$P
    pick $SIZES; local size=$P
    pick text logs; local f="$WORK/in/$P-$size"
    case "$prog" in
    gzip) rnd 9; gzip -$(( R + 1 )) -c "$f" >/dev/null ;;
    xz) [ "$size" -gt 96 ] && f="${f%-*}-96"
        rnd 3; local lvl=$R; pick 1 2; xz -"$lvl" -T"$P" -c "$f" >/dev/null ;;
    zstd) rnd 12; local lvl=$(( R + 1 )); pick 1 2; zstd -q -"$lvl" -T"$P" -c "$f" >/dev/null ;;
    bzip2) rnd 9; bzip2 -$(( R + 1 )) -c "$f" >/dev/null ;;
    *) "$prog" "$f" >/dev/null ;;
    esac
}
requests_loop() { # SEED PROGRAMS...
    SEED=$1; shift
    while [ "$(now)" -lt "$END" ]; do one_request "$@"; done
}
TRAIN_PROGRAMS="gzip xz zstd sha256sum md5sum sha1sum"
requests() {
    requests_loop $(( SEED + 1 )) $TRAIN_PROGRAMS &
    requests_loop $(( SEED + 2 )) $TRAIN_PROGRAMS
    wait
}
requests_unseen() {
    requests_loop $(( SEED + 1 )) $TRAIN_PROGRAMS bzip2 b2sum &
    requests_loop $(( SEED + 2 )) $TRAIN_PROGRAMS bzip2 b2sum
    wait
}

# --- segments --------------------------------------------------------------------------
provenance() { # NAME SET SEED SECONDS LOAD_BEFORE
    local load_after; load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    # One line per recording: a re-recorded segment replaces its line.
    if [ -f "$OUT/provenance.jsonl" ]; then
        grep -v "\"recording\":\"$1.umbra\"" "$OUT/provenance.jsonl" > "$OUT/provenance.tmp" || true
        mv "$OUT/provenance.tmp" "$OUT/provenance.jsonl"
    fi
    printf '{"recording":"%s.umbra","set":"%s","seed":%s,"seconds":%s,"driver":"%s","script_version":%s,"started_utc":"%s","machine":"%s","cpus":%s,"mem_total_kib":%s,"kernel":"%s","load_before":"%s","load_after":"%s"}\n' \
        "$1" "$2" "$3" "$4" "$6" "$SCRIPT_VERSION" "$7" "$(uname -m)" "$(nproc)" \
        "$(awk '/MemTotal/ {print $2}' /proc/meminfo)" "$(uname -r)" "$5" "$load_after" \
        >> "$OUT/provenance.jsonl"
}

set_up=""
echo "$SEGMENTS" | sed '/^$/d' > "$WORK/segments"
while read -r name set seed secs driver _uses; do
    if [ -n "$ONLY" ] && ! echo ",$ONLY," | grep -q ",$name,"; then continue; fi
    secs=$(awk -v s="$secs" -v k="$SCALE" 'BEGIN { v = int(s * k); print (v < 10 ? 10 : v) }')
    case "$driver" in
    daily*|requests*) case "$set_up" in *inputs*) ;; *) inputs_setup; set_up="$set_up inputs" ;; esac ;;
    db) db_setup ;;
    compile) compile_setup ;;
    esac
    load=$(cut -d' ' -f1-3 /proc/loadavg)
    started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    echo "recording $name ($set, seed $seed, ${secs}s, load $load)" >&2
    SEED=$seed
    END=$(( $(now) + secs - 1 ))
    ( set +e +o pipefail; sleep 1; "$driver" ) </dev/null &
    drv=$!
    "$UMBRA" --log warn record --duration "$secs" -o "$OUT/$name.umbra"
    wait "$drv" || true
    [ "$driver" = db ] && db_teardown
    provenance "$name" "$set" "$seed" "$secs" "$load" "$driver" "$started"
done < "$WORK/segments"
ls -la "$OUT"
