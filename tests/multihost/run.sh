#!/usr/bin/env bash
# Two hosts on one machine: two network namespaces joined by a veth pair,
# each with its own hostname (a UTS namespace) and address, and
# `torchtp-run --nnodes 2` started in each. Runs the layer and block tests,
# the main job and its checkpoint across them, and the failures a
# multi-host job meets; prints a table and exits non-zero when any case
# fails.
#
# Usage (as root): run.sh BUILD_DIR [CASE...]
#   CASE: layers train interface kill_rank kill_launcher freeze_host
#         wrong_addr port_taken nnodes_mismatch master_by_name mpirun
#         (default: all)
#   KEEP=1 keeps the logs (the directory is printed at the end).
#
# Host A is 10.77.0.1 and calls itself hostA, which its /etc/hosts maps to
# 127.0.1.1 as Debian's does; host B is 10.77.0.2, hostB, which resolves to
# nothing (its /etc/hosts knows hostA, as a cluster's DNS would). Each is
# the trap of a default install. Traffic stays on the veth
# pair and on each namespace's own loopback (their DNS is their loopback):
# no other address is ever used. The namespaces and everything started in
# them are removed on exit.
set -uo pipefail

die() {
  echo "multihost: FAIL: $*" >&2
  exit 1
}
[ $# -ge 1 ] || die "usage: run.sh BUILD_DIR [CASE...]"
build=$(cd "$1" && pwd) || die "no build directory '$1'"
shift
src=$(cd "$(dirname "$0")/../.." && pwd)
run=$build/torchtp-run
train=$build/examples/train_gpt
hold=$build/tests/hold_port
data=$src/examples/data/shakespeare.txt
cases=("$@")
[ ${#cases[@]} -gt 0 ] || cases=(layers train interface kill_rank
  kill_launcher freeze_host wrong_addr port_taken nnodes_mismatch
  master_by_name mpirun)

for f in "$run" "$train" "$hold" "$build"/tests/test_{group,mappings,linear,blocks,uneven}; do
  [ -x "$f" ] || die "$f is not built"
done
# A machine that cannot make network namespaces cannot run this test: it
# says so and exits 77, which CTest reports as skipped (SKIP_RETURN_CODE),
# so `make test` passes for a user without root. CI runs as root.
skip() {
  echo "multihost: SKIPPED: $*" >&2
  exit 77
}
[ "$(id -u)" -eq 0 ] ||
  skip "needs root to create network namespaces (running as uid $(id -u)); CI runs it as root"
for tool in ip unshare timeout mount hostname; do
  command -v $tool > /dev/null || die "needs '$tool' (iproute2, util-linux, coreutils: scripts/setup.sh installs them)"
done
unshare --net true 2> /dev/null ||
  skip "root, but this machine refuses new network namespaces (unshare --net: no CAP_SYS_ADMIN in this container?)"

id=$$
nsA=tpmh-a-$id
nsB=tpmh-b-$id
work=$(mktemp -d /tmp/torchtp-multihost.XXXXXX)
shared=$work/shared # the "shared filesystem" both hosts see
mkdir -p "$shared"

# Everything the script starts runs in one of its namespaces: killing the
# namespaces' processes ends all of it, and nothing else.
cleanup() {
  local ns pids
  for ns in $nsA $nsB; do
    pids=$(ip netns pids $ns 2> /dev/null)
    [ -z "$pids" ] || kill -9 $pids 2> /dev/null
  done
  pids=$(jobs -p)
  disown -a # no "Killed" line for each
  [ -z "$pids" ] || kill -9 $pids 2> /dev/null
  ip netns del $nsA 2> /dev/null
  ip netns del $nsB 2> /dev/null
  if [ "${KEEP:-0}" = 1 ]; then
    echo "multihost: logs kept in $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A run killed outright (SIGKILL: no trap) leaves its namespaces behind;
# they are named after its pid.
for ns in $(ip netns list 2> /dev/null | grep -oE '^tpmh-[ab]-[0-9]+'); do
  owner=${ns##*-}
  if ! kill -0 "$owner" 2> /dev/null; then
    pids=$(ip netns pids "$ns" 2> /dev/null)
    [ -z "$pids" ] || kill -9 $pids 2> /dev/null
    ip netns del "$ns" 2> /dev/null && echo "multihost: removed $ns, left by a killed run"
  fi
done

err=$(ip netns add $nsA 2>&1) ||
  die "cannot create a network namespace ('ip netns add': $err); the test bed needs root and network namespaces"
ip netns add $nsB || die "cannot create a second network namespace"
ip link add tpmha$id netns $nsA type veth peer name tpmhb$id netns $nsB ||
  die "cannot create a veth pair between the namespaces"
ip -n $nsA addr add 10.77.0.1/24 dev tpmha$id
ip -n $nsB addr add 10.77.0.2/24 dev tpmhb$id
for ns in $nsA $nsB; do
  ip -n $ns link set lo up
done
ip -n $nsA link set tpmha$id up
ip -n $nsB link set tpmhb$id up
printf '127.0.0.1 localhost\n127.0.1.1 hostA\n' > "$work/hosts.A"
printf '127.0.0.1 localhost\n10.77.0.1 hostA\n' > "$work/hosts.B"
printf 'nameserver 127.0.0.1\n' > "$work/resolv.conf"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# on_host A|B PIDFILE CMD...: runs CMD on host A or B, with that host's
# hostname, /etc/hosts and resolver; PIDFILE gets CMD's pid.
on_host() {
  local h=$1 pidfile=$2 ns=$nsA
  shift 2
  [ "$h" = B ] && ns=$nsB
  ip netns exec "$ns" unshare --uts --mount sh -c '
    mount --bind "$1" /etc/hosts &&
    { [ ! -e /etc/resolv.conf ] || mount --bind "$2" /etc/resolv.conf; } &&
    hostname "$3" && echo $$ > "$4" && shift 4 && exec "$@"' \
    sh "$work/hosts.$h" "$work/resolv.conf" "host$h" "$pidfile" "$@"
}

# launch NAME A|B LIMIT ARGS...: starts `torchtp-run ARGS` on the host in
# the background, killed after LIMIT seconds; its output goes to
# $work/NAME.H.log, its exit code and end time to $work/NAME.H.end, and the
# pid of timeout(1), the launcher's parent, to $work/NAME.H.pid.
launch() {
  local name=$1 h=$2 limit=$3 base=$work/$1.$2
  shift 3
  rm -f "$base.end" "$base.pid"
  (
    on_host "$h" "$base.pid" timeout -k 5 "$limit" \
      env "${JOB_ENV[@]}" "$run" "$@" > "$base.log" 2>&1
    echo "$? $(now)" > "$base.end"
  ) 2> /dev/null & # not the shell's "Killed" when a case kills the launcher
}

# wait_end NAME H LIMIT: waits (at most LIMIT s) for the launch to end;
# sets CODE and END (empty when it did not end).
wait_end() {
  local f=$work/$1.$2.end deadline=$((SECONDS + $3))
  while [ ! -s "$f" ] && [ $SECONDS -lt $deadline ]; do
    sleep 0.1
  done
  CODE= END=
  [ -s "$f" ] && read -r CODE END < "$f"
}

# launcher_pid NAME H: the pid of that launch's torchtp-run.
launcher_pid() {
  local f=$work/$1.$2.pid deadline=$((SECONDS + 10))
  while [ ! -s "$f" ] && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
  pgrep -P "$(cat "$f")" | head -n 1
}

# rank_pid NAME H RANK: the pid of world rank RANK started by that launch.
rank_pid() {
  local launcher c
  launcher=$(launcher_pid "$1" "$2")
  for c in $(pgrep -P "$launcher"); do
    if tr '\0' '\n' < /proc/$c/environ 2> /dev/null | grep -qx "RANK=$3"; then
      echo $c
      return
    fi
  done
}

# wait_for_line NAME H PATTERN LIMIT: waits until the log matches PATTERN.
wait_for_line() {
  local deadline=$((SECONDS + $4))
  while [ $SECONDS -lt $deadline ]; do
    grep -qE "$3" "$work/$1.$2.log" 2> /dev/null && return 0
    [ -s "$work/$1.$2.end" ] && return 1
    sleep 0.2
  done
  return 1
}

# nodes K PORT: the launcher flags of node K of the 2 x 2 job.
nodes() {
  echo --nnodes 2 --node-rank "$1" --master-addr 10.77.0.1 --master-port "$2" \
    --nproc-per-node 2
}

results=()
failures=0
# record CASE EXPECTED GOT SECONDS OK: one row of the summary table.
record() {
  local verdict=PASS
  if [ "$5" != 1 ]; then
    verdict=FAIL
    failures=$((failures + 1))
  fi
  results+=("$verdict|$1|$2|$3|$4")
  echo "multihost: $verdict $1: $3 (${4} s)"
}

# show NAME: the end of both hosts' logs, for a failed case.
show() {
  local h
  for h in A B; do
    [ -f "$work/$1.$h.log" ] || continue
    echo "---- $1 on host $h (last 15 lines)"
    tail -n 15 "$work/$1.$h.log"
  done
}

# has NAME H TEXT: the log contains TEXT (a fixed string).
has() { grep -qF -- "$3" "$work/$1.$2.log"; }

port=29600
next_port() { port=$((port + 1)); }

case_layers() {
  JOB_ENV=(TORCHTP_TIMEOUT_S=60)
  local t start a b ok
  for t in group mappings linear blocks uneven; do
    next_port
    start=$(now)
    launch $t A 400 $(nodes 0 $port) "$build/tests/test_$t"
    launch $t B 400 $(nodes 1 $port) "$build/tests/test_$t"
    wait_end $t A 420
    a=$CODE
    wait_end $t B 420
    b=$CODE
    ok=0
    [ "$a" = 0 ] && [ "$b" = 0 ] && ok=1
    record "test_$t 2 hosts x 2" "both exit 0" "A ${a:-hang}, B ${b:-hang}" \
      "$(elapsed "$start" "${END:-$(now)}")" $ok
    [ $ok = 1 ] || show $t
    if [ $t = group ]; then
      # The communicators each group got, as the test printed them.
      local line
      line=$(grep -ho 'backends: .*' "$work/group.A.log" | head -n 1)
      ok=0
      [ "$line" = "backends: world gloo, within a host shm, across hosts gloo" ] && ok=1
      record "shm within a host, gloo across" \
        "world gloo, host shm, across gloo" "${line#backends: }" - $ok
    fi
  done
}

small=(--data "$data" --d-model 32 --heads 4 --layers 1 --seq 16
  --dtype float64 --batch 4 --sample-chars 20)

case_train() {
  JOB_ENV=(TORCHTP_TIMEOUT_S=60)
  next_port
  local start ok a b
  start=$(now)
  # TP=2 x DP=2: the tensor groups are the two ranks of each host.
  launch train A 300 $(nodes 0 $port) "$train" "${small[@]}" --tp 2 \
    --steps 6 --log-every 2 --out "$shared/tp2dp2"
  launch train B 300 $(nodes 1 $port) "$train" "${small[@]}" --tp 2 \
    --steps 6 --log-every 2 --out "$shared/tp2dp2"
  wait_end train A 320
  a=$CODE
  wait_end train B 320
  b=$CODE
  ok=0
  [ "$a" = 0 ] && [ "$b" = 0 ] && has train A "4 ranks = tensor 2 x data 2" &&
    [ -f "$shared/tp2dp2/checkpoint/meta.json" ] && ok=1
  record "train_gpt TP=2 x DP=2, 6 steps" "both exit 0, checkpoint" \
    "A ${a:-hang}, B ${b:-hang}" "$(elapsed "$start" "${END:-$(now)}")" $ok
  [ $ok = 1 ] || show train

  # Host B wrote none of the checkpoint (one replica writes, on host A):
  # it reads it from the shared directory, at TP=1, and trains on.
  start=$(now)
  launch resume B 300 --nproc-per-node 1 "$train" "${small[@]}" --steps 10 \
    --log-every 2 --resume "$shared/tp2dp2/checkpoint" --out "$shared/tp2dp2"
  launch straight A 300 --nproc-per-node 1 "$train" "${small[@]}" --steps 10 \
    --log-every 2 --out "$shared/straight"
  wait_end resume B 320
  b=$CODE
  wait_end straight A 320
  a=$CODE
  local diff=none
  if [ "$a" = 0 ] && [ "$b" = 0 ]; then
    diff=$(paste -d, "$shared/straight/loss.csv" "$shared/tp2dp2/loss.csv" |
      awk -F, 'NR > 1 { d = $2 - $4; if (d < 0) d = -d; if (d > m) m = d; n++ }
        END { if (n != 10) print "rows:" n; else printf "%.2g", m + 0 }')
  fi
  ok=0
  has resume B "resumed from" &&
    awk -v d="$diff" 'BEGIN { exit !(d ~ /^[0-9.e+-]+$/ && d + 0 < 1e-9) }' &&
    ok=1
  record "checkpoint 2x2 -> TP=1 on host B" \
    "resumes; loss = TP=1 run (1e-9)" "resume ${b:-hang}, max diff $diff" \
    "$(elapsed "$start" "$(now)")" $ok
  [ $ok = 1 ] || show resume
}

# A job that trains until stopped, once every rank has made a step.
start_long_job() {
  next_port
  launch $1 A 120 $(nodes 0 $port) "$train" "${small[@]}" --tp 2 \
    --steps 1000000 --log-every 1 --out "$work/$1"
  launch $1 B 120 $(nodes 1 $port) "$train" "${small[@]}" --tp 2 \
    --steps 1000000 --log-every 1 --out "$work/$1"
  wait_for_line $1 A 'step +3/' 90
}

timeout_s=20

case_kill_rank() {
  JOB_ENV=(TORCHTP_TIMEOUT_S=$timeout_s)
  local victim t0 a b ta tb ok=0
  if start_long_job kill_rank; then
    victim=$(rank_pid kill_rank B 3)
    t0=$(now)
    kill -9 "$victim"
    wait_end kill_rank B 60
    b=$CODE tb=${END:-}
    wait_end kill_rank A 60
    a=$CODE ta=${END:-}
  fi
  local sa=- sb=-
  [ -n "${ta:-}" ] && sa=$(elapsed "$t0" "$ta")
  [ -n "${tb:-}" ] && sb=$(elapsed "$t0" "$tb")
  if [ -n "${a:-}" ] && [ -n "${b:-}" ] && [ "$a" != 0 ] && [ "$b" != 0 ] &&
    awk -v a="$sa" -v b="$sb" 'BEGIN { exit !(a < 10 && b < 10) }' &&
    has kill_rank B "rank 3 (pid $victim) was killed by signal 9" &&
    has kill_rank A "rank 3" && has kill_rank A "root cause"; then
    ok=1
  fi
  record "rank 3 on host B killed" \
    "both exit !=0 <10 s, name rank 3; A prints the root cause" \
    "A ${a:-hang} after $sa s, B ${b:-hang} after $sb s" "$sa / $sb" $ok
  [ $ok = 1 ] || show kill_rank
}

case_kill_launcher() {
  JOB_ENV=(TORCHTP_TIMEOUT_S=$timeout_s)
  local t0 a ta ok=0 sa=- left=-
  if start_long_job kill_launcher; then
    t0=$(now)
    kill -9 "$(launcher_pid kill_launcher B)"
    wait_end kill_launcher A 60
    a=$CODE ta=${END:-}
    [ -n "$ta" ] && sa=$(elapsed "$t0" "$ta")
    sleep 1
    left=$(ip netns pids $nsB | wc -l) # its ranks die with it
  fi
  if [ -n "${a:-}" ] && [ "$a" != 0 ] && [ "$left" = 0 ] &&
    awk -v a="$sa" -v t=$timeout_s 'BEGIN { exit !(a < t) }'; then
    ok=1
  fi
  record "host B's launcher SIGKILLed" \
    "A exits !=0 < ${timeout_s} s, B's ranks gone" \
    "A ${a:-hang} after $sa s, $left processes left on B" "$sa" $ok
  [ $ok = 1 ] || show kill_launcher
}

case_freeze_host() {
  JOB_ENV=(TORCHTP_TIMEOUT_S=$timeout_s)
  local t0 a ta ok=0 sa=-
  if start_long_job freeze_host; then
    t0=$(now)
    kill -STOP $(ip netns pids $nsB) # a host that stops answering
    wait_end freeze_host A $((timeout_s + 30))
    a=$CODE ta=${END:-}
    [ -n "$ta" ] && sa=$(elapsed "$t0" "$ta")
    kill -9 $(ip netns pids $nsB) 2> /dev/null
  fi
  if [ -n "${a:-}" ] && [ "$a" != 0 ] && has freeze_host A "timeout" &&
    awk -v a="$sa" -v t=$timeout_s 'BEGIN { exit !(a < t + 10) }'; then
    ok=1
  fi
  record "host B frozen (SIGSTOP)" "A exits !=0 within ${timeout_s} s + 10" \
    "A ${a:-hang} after $sa s" "$sa" $ok
  [ $ok = 1 ] || show freeze_host
}

rendezvous_timeout=15
# The bounds of the cases below catch hangs, not slowness: on a loaded
# machine each rank takes seconds just to start (libtorch), so they leave
# room for that beyond the timeout.
quick=("$train" "${small[@]}" --steps 1)

# pair_result NAME LIMIT: waits for both launches; sets A B SA SB.
pair_result() {
  local t0=$1 limit=$2 name=$3
  wait_end $name A $limit
  A=$CODE SA=-
  [ -n "$END" ] && SA=$(elapsed "$t0" "$END")
  wait_end $name B $limit
  B=$CODE SB=-
  [ -n "$END" ] && SB=$(elapsed "$t0" "$END")
}

# both_failed_within SECONDS: A and B exited non-zero within that time.
both_failed_within() {
  [ -n "$A" ] && [ -n "$B" ] && [ "$A" != 0 ] && [ "$B" != 0 ] &&
    awk -v a="$SA" -v b="$SB" -v l="$1" 'BEGIN { exit !(a < l && b < l) }'
}

case_wrong_addr() {
  JOB_ENV=(TORCHTP_TIMEOUT_S=$rendezvous_timeout)
  next_port
  local t0 ok=0 bound=$((2 * rendezvous_timeout + 15))
  t0=$(now)
  launch wrong_addr A 120 $(nodes 0 $port) "${quick[@]}" --out "$work/wa"
  launch wrong_addr B 120 --nnodes 2 --node-rank 1 --master-addr 10.77.0.3 \
    --master-port $port --nproc-per-node 2 "${quick[@]}" --out "$work/wa"
  pair_result "$t0" 90 wrong_addr
  both_failed_within $bound && has wrong_addr B "10.77.0.3" &&
    has wrong_addr A "ranks 2, 3" && ok=1
  record "host B: --master-addr 10.77.0.3" \
    "both exit !=0 < $bound s, name it" \
    "A ${A:-hang} after $SA s, B ${B:-hang} after $SB s" "$SA / $SB" $ok
  [ $ok = 1 ] || show wrong_addr
}

case_port_taken() {
  JOB_ENV=(TORCHTP_TIMEOUT_S=$rendezvous_timeout)
  next_port
  local t0 ok=0 bound=$((2 * rendezvous_timeout + 15))
  on_host A "$work/hold.pid" "$hold" 0.0.0.0 $port > "$work/hold.log" 2>&1 &
  local deadline=$((SECONDS + 10))
  until grep -q listening "$work/hold.log" || [ $SECONDS -ge $deadline ]; do
    sleep 0.1
  done
  t0=$(now)
  launch port_taken A 120 $(nodes 0 $port) "${quick[@]}" --out "$work/pt"
  launch port_taken B 120 $(nodes 1 $port) "${quick[@]}" --out "$work/pt"
  pair_result "$t0" 90 port_taken
  kill -9 "$(cat "$work/hold.pid")" 2> /dev/null
  both_failed_within $bound && has port_taken A "in use" && ok=1
  record "port $port taken on host A" "both exit !=0 < $bound s, say so" \
    "A ${A:-hang} after $SA s, B ${B:-hang} after $SB s" "$SA / $SB" $ok
  [ $ok = 1 ] || show port_taken
}

case_nnodes_mismatch() {
  JOB_ENV=(TORCHTP_TIMEOUT_S=$rendezvous_timeout)
  next_port
  local t0 ok=0 bound=$((2 * rendezvous_timeout + 15))
  t0=$(now)
  launch nnodes_mismatch A 120 $(nodes 0 $port) "${quick[@]}" --out "$work/nm"
  launch nnodes_mismatch B 120 --nnodes 3 --node-rank 1 \
    --master-addr 10.77.0.1 --master-port $port --nproc-per-node 2 \
    "${quick[@]}" --out "$work/nm"
  pair_result "$t0" 90 nnodes_mismatch
  local both="a world of 6 ranks, rank 0 (on hostA) for a world of 4"
  both_failed_within $bound && has nnodes_mismatch A "$both" &&
    has nnodes_mismatch B "$both" && ok=1
  record "--nnodes 2 on A, 3 on B" "both exit !=0 < $bound s, name 4 and 6" \
    "A ${A:-hang} after $SA s, B ${B:-hang} after $SB s" "$SA / $SB" $ok
  [ $ok = 1 ] || show nnodes_mismatch
}

case_interface() {
  next_port
  local t0 ok=0
  t0=$(now)
  JOB_ENV=(TORCHTP_TIMEOUT_S=$rendezvous_timeout GLOO_SOCKET_IFNAME=tpmha$id)
  launch interface A 120 $(nodes 0 $port) "${quick[@]}" --out "$work/if"
  # Host B names it with the launcher's flag instead of the variable.
  JOB_ENV=(TORCHTP_TIMEOUT_S=$rendezvous_timeout)
  launch interface B 120 $(nodes 1 $port) --interface tpmhb$id \
    "${quick[@]}" --out "$work/if"
  pair_result "$t0" 90 interface
  [ "$A" = 0 ] && [ "$B" = 0 ] &&
    has interface A "Gloo listens on interface tpmha$id" &&
    has interface B "Gloo listens on interface tpmhb$id" && ok=1
  record "GLOO_SOCKET_IFNAME on A, --interface on B" \
    "both exit 0, on that interface" \
    "A ${A:-hang}, B ${B:-hang}" "$SA / $SB" $ok
  [ $ok = 1 ] || show interface
}

# --master-addr hostA: host B resolves it to 10.77.0.1, host A (Debian's
# /etc/hosts) to 127.0.1.1, where nobody from host B can reach its ranks.
case_master_by_name() {
  JOB_ENV=(TORCHTP_TIMEOUT_S=$rendezvous_timeout)
  next_port
  local t0 ok=0 bound=30
  t0=$(now)
  launch master_by_name A 120 $(nodes 0 $port | sed 's/10.77.0.1/hostA/') \
    "${quick[@]}" --out "$work/mn"
  launch master_by_name B 120 $(nodes 1 $port | sed 's/10.77.0.1/hostA/') \
    "${quick[@]}" --out "$work/mn"
  pair_result "$t0" 90 master_by_name
  local says="reach MASTER_ADDR (hostA) through loopback"
  both_failed_within $bound && has master_by_name A "$says" &&
    has master_by_name B "$says" && has master_by_name B "ranks 0, 1 on hostA" &&
    ok=1
  record "--master-addr hostA (127.0.1.1 on A)" \
    "both exit !=0 < $bound s, say why" \
    "A ${A:-hang} after $SA s, B ${B:-hang} after $SB s" "$SA / $SB" $ok
  [ $ok = 1 ] || show master_by_name
}

# The main job started by OpenMPI's mpirun on host A with two slots on
# each host. mpirun starts its daemon on host B through an "rsh agent", in
# place of ssh: a script that enters host B's namespaces and runs the
# command line the way ssh's remote shell would. OpenMPI's own traffic is
# kept on the veth pair.
case_mpirun() {
  if ! command -v mpirun > /dev/null; then
    record "mpirun across hosts" "trains, same loss as torchtp-run" \
      "mpirun not installed (scripts/setup.sh installs openmpi-bin)" - 0
    return
  fi
  next_port
  cat > "$work/agent.sh" << AGENT
#!/bin/sh
# agent HOST COMMAND...: COMMAND on HOST (only hostB), as ssh would run it.
[ "\$1" = hostB ] || { echo "agent: unknown host \$1" >&2; exit 255; }
shift
exec ip netns exec $nsB unshare --uts --mount sh -c '
  mount --bind "\$0" /etc/hosts && hostname hostB && exec sh -c "\$*"' \\
  "$work/hosts.B" "\$@"
AGENT
  chmod +x "$work/agent.sh"
  local start ok=0 a
  start=$(now)
  JOB_ENV=(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1)
  on_host A "$work/mpirun.A.pid" timeout -k 5 300 env "${JOB_ENV[@]}" \
    mpirun --host hostA:2,hostB:2 -np 4 \
    --mca plm_rsh_agent "$work/agent.sh" \
    --mca oob_tcp_if_include 10.77.0.0/24 --mca btl self,tcp \
    --mca btl_tcp_if_include 10.77.0.0/24 \
    -x MASTER_ADDR=10.77.0.1 -x MASTER_PORT=$port -x TORCHTP_TIMEOUT_S=60 \
    "$train" "${small[@]}" --tp 2 --steps 6 --log-every 2 \
    --out "$shared/mpirun" > "$work/mpirun.A.log" 2>&1
  a=$?
  # The loss curve of case_train's TP=1 run (its first 6 steps), when it
  # ran: float64, so within 1e-9.
  local same=yes
  if [ -f "$shared/straight/loss.csv" ]; then
    same=$(paste -d, "$shared/straight/loss.csv" "$shared/mpirun/loss.csv" |
      awk -F, 'NR > 1 && $4 != "" { d = $2 - $4; if (d < 0) d = -d;
                 if (d > m) m = d; n++ }
        END { print (n == 6 && m < 1e-9) ? "yes" : "no" }')
  fi
  [ "$a" = 0 ] && has mpirun A "4 ranks = tensor 2 x data 2" &&
    has mpirun A "Gloo listens on 10.77.0.2" && [ $same = yes ] && ok=1
  record "mpirun, 2 hosts x 2" "exit 0, ranks on both, train's losses" \
    "A ${a}, same losses: $same" "$(elapsed "$start" "$(now)")" $ok
  [ $ok = 1 ] || tail -n 30 "$work/mpirun.A.log"
}

echo "multihost: hosts hostA 10.77.0.1 ($nsA), hostB 10.77.0.2 ($nsB); work in $work"
for c in "${cases[@]}"; do
  declare -F "case_$c" > /dev/null || die "unknown case '$c'"
  "case_$c"
done

echo
printf '%-4s | %-34s | %-40s | %-46s | %s\n' "" case expected got seconds
printf '%s\n' "$(printf '%.0s-' {1..150})"
for row in "${results[@]}"; do
  IFS='|' read -r v c e g s <<< "$row"
  printf '%-4s | %-34s | %-40s | %-46s | %s\n' "$v" "$c" "$e" "$g" "$s"
done
echo "multihost: ${#results[@]} cases, $failures failed"
[ $failures -eq 0 ]
