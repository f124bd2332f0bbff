#!/usr/bin/env bash
# A throw-away Ceph RADOS Gateway (S3 API) on this machine, for tests and
# benchmarks: one monitor, one OSD on the in-memory `memstore` object store,
# pools of size 1, no cephx, radosgw's beast frontend on 127.0.0.1.
#
#   scripts/radosgw.sh start DIR [BUCKET]   # DIR must not exist; prints KEY=VALUE lines:
#       S3_ENDPOINT, S3_BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, RADOSGW_DIR
#   scripts/radosgw.sh stop DIR             # kills the pids in DIR/pids, removes DIR
#
# e.g.  set -a; eval "$(scripts/radosgw.sh start /tmp/rgw)"; set +a; …; scripts/radosgw.sh stop /tmp/rgw
#       (set -a exports the variables, so programs started afterwards see the credentials)
#
# Needs Debian's ceph-mon, ceph-osd, radosgw, ceph-common. Everything lives in
# DIR (config, data, logs, sockets); every daemon runs in the foreground (-f)
# under this script's control, so `stop` ends each one by its pid.
set -euo pipefail

die() { echo "radosgw.sh: $*" >&2; exit 1; }
# How long to wait for each stage (s); radosgw takes writes after ~20 s here.
WAIT=${RADOSGW_WAIT:-180}

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}

# Wait until "$@" succeeds, at most WAIT seconds; the stage name is $STAGE.
wait_for() {
  local t=0
  until "$@" >/dev/null 2>&1; do
    t=$((t + 1))
    [ "$t" -ge "$WAIT" ] && { echo "radosgw.sh: timed out waiting for $STAGE; logs in $DIR/log" >&2; tail -n 20 "$DIR"/log/*.log >&2 || true; return 1; }
    sleep 1
  done
}

stop() {
  local dir=$1
  [ -d "$dir" ] || return 0
  if [ -f "$dir/pids" ]; then
    # radosgw first, the OSD, the monitor last (each by its pid).
    for pid in $(tac "$dir/pids"); do kill "$pid" 2>/dev/null || true; done
    for pid in $(tac "$dir/pids"); do
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    done
  fi
  rm -rf "$dir"
}

start() {
  DIR=$1
  local bucket=${2:-nbd-engine}
  [ -e "$DIR" ] && die "$DIR exists"
  for tool in ceph-mon ceph-osd radosgw radosgw-admin ceph monmaptool ceph-authtool curl uuidgen; do
    command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || [ -x "/usr/bin/$tool" ] \
      || die "$tool is missing: apt-get install ceph-mon ceph-osd radosgw ceph-common curl uuid-runtime"
  done
  export PATH="$PATH:/usr/sbin:/usr/bin"
  mkdir -p "$DIR"/{mon,osd,run,log,rgw}
  DIR=$(cd "$DIR" && pwd)
  # If anything below fails, take down what was started.
  [ -n "${RADOSGW_KEEP:-}" ] || trap 'stop "$DIR"' ERR

  local fsid mon_port rgw_port conf
  fsid=$(uuidgen)
  mon_port=$(free_port)
  rgw_port=$(free_port)
  while [ "$rgw_port" = "$mon_port" ]; do rgw_port=$(free_port); done
  conf="$DIR/ceph.conf"
  cat >"$conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_port]
public addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
# radosgw fails authentication against the monitor without this, even with auth none.
ms mon client mode = crc
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
log file = $DIR/log/\$name.log
pid file = $DIR/run/\$name.pid
keyring = $DIR/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = ${RADOSGW_MEMSTORE_BYTES:-4294967296}
mon data avail crit = 0
mon data avail warn = 0

[mon.a]
mon data = $DIR/mon/a

[osd.0]
osd data = $DIR/osd/0

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$rgw_port
rgw data = $DIR/rgw
rgw dns name = 127.0.0.1
EOF
  # One keyring for every daemon and tool (radosgw insists on having one).
  ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$DIR/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$DIR/keyring" --gen-key -n client.rgw --cap mon 'allow rw' --cap osd 'allow rwx' >/dev/null

  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$mon_port]" "$DIR/monmap" >/dev/null
  ceph-mon -c "$conf" --mkfs -i a --monmap "$DIR/monmap" --keyring "$DIR/keyring" 2>>"$DIR/log/setup.log"
  ceph-mon -c "$conf" -f -i a >>"$DIR/log/mon.out" 2>&1 &
  echo $! >>"$DIR/pids"
  STAGE=monitor wait_for ceph -c "$conf" --connect-timeout 5 mon stat

  local osd_uuid
  osd_uuid=$(uuidgen)
  ceph -c "$conf" osd new "$osd_uuid" 0 >/dev/null
  mkdir -p "$DIR/osd/0"
  ceph-osd -c "$conf" -i 0 --mkfs --osd-uuid "$osd_uuid" 2>>"$DIR/log/setup.log" >/dev/null
  ceph-osd -c "$conf" -f -i 0 >>"$DIR/log/osd.out" 2>&1 &
  echo $! >>"$DIR/pids"
  STAGE=osd wait_for sh -c "ceph -c '$conf' --connect-timeout 5 osd stat | grep -q '1 up'"

  radosgw -c "$conf" -f -n client.rgw >>"$DIR/log/rgw.out" 2>&1 &
  echo $! >>"$DIR/pids"
  local endpoint="http://127.0.0.1:$rgw_port"
  STAGE="radosgw HTTP" wait_for curl -sf -o /dev/null "$endpoint/"

  local access secret
  access=$(head -c 10 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)
  secret=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
  STAGE="radosgw user" wait_for radosgw-admin -c "$conf" user create --uid=nbd-engine \
    --display-name=nbd-engine --access-key="$access" --secret-key="$secret"
  # radosgw wants the payload hash header, which curl's SigV4 does not add by itself.
  local sig=(--aws-sigv4 "aws:amz:us-east-1:s3" --user "$access:$secret" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
  # The store takes writes some seconds after it answers HTTP: wait for a real PUT.
  STAGE="bucket creation" wait_for curl -sf "${sig[@]}" -X PUT "$endpoint/$bucket"
  STAGE="a first PUT" wait_for curl -sf "${sig[@]}" -X PUT --data-binary probe "$endpoint/$bucket/.radosgw-probe"
  curl -sf "${sig[@]}" -X DELETE "$endpoint/$bucket/.radosgw-probe" >/dev/null || true
  trap - ERR
  echo "S3_ENDPOINT=$endpoint"
  echo "S3_BUCKET=$bucket"
  echo "AWS_ACCESS_KEY_ID=$access"
  echo "AWS_SECRET_ACCESS_KEY=$secret"
  echo "AWS_REGION=us-east-1"
  echo "RADOSGW_DIR=$DIR"
}

case "${1:-}" in
  start) [ $# -ge 2 ] || die "usage: $0 start DIR [BUCKET]"; start "$2" "${3:-}" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop DIR"; stop "$2" ;;
  *) die "usage: $0 start DIR [BUCKET] | stop DIR" ;;
esac
