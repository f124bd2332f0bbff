#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the Debian peer tools
# when they are missing, installs npm dependencies, builds, type-checks,
# runs vitest (unit, property, integration) with coverage, and ends with a
# plain "N passed, N failed, N skipped" line taken from vitest's JSON report.
set -uo pipefail
cd "$(dirname "$0")/.."

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have nbdinfo  || need+=(libnbd-bin)
have qemu-img || need+=(qemu-utils)
have nbdkit   || need+=(nbdkit)
have fio      || need+=(fio)
have certtool || need+=(gnutls-bin)
have chromium  || need+=(chromium)
# The reference server and client from the NBD project itself (the probe's and strict mode's peers);
# nbd-client lives in /usr/sbin.
have nbd-server || need+=(nbd-server)
[ -x /usr/sbin/nbd-client ] || have nbd-client || need+=(nbd-client)
# sfdisk and fdisk live in /usr/sbin, often not on a user's PATH.
[ -x /usr/sbin/sfdisk ] || have sfdisk || need+=(fdisk)
[ -f /usr/lib/python3/dist-packages/nbd.py ] || need+=(python3-libnbd)
# The file backend's native addon is compiled by `npm ci` (scripts/build-native.mjs); without a
# compiler it falls back quietly and the sparse tests fail, so make sure there is one.
have cc || need+=(gcc libc6-dev)
have make || need+=(make)
# A real S3 store for the s3 backend's tests: Ceph's RADOS Gateway (scripts/radosgw.sh).
[ -x /usr/bin/ceph-mon ] || need+=(ceph-mon)
[ -x /usr/bin/ceph-osd ] || need+=(ceph-osd)
[ -x /usr/bin/radosgw ] || need+=(radosgw)
[ -x /usr/bin/ceph ] || need+=(ceph-common)
have curl || need+=(curl)
have uuidgen || need+=(uuid-runtime)
if [ ${#need[@]} -gt 0 ]; then
  echo "test: installing Debian peers: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null \
    || { echo "test: could not install ${need[*]}"; [ "${CI:-}" = "true" ] && exit 1; }
fi

if [ ! -d node_modules ] || [ "${CI:-}" = "true" ]; then
  npm ci --no-audit --no-fund || exit 1
fi
npm run build || exit 1
npm run typecheck || exit 1

mkdir -p .test-results
npx vitest run --coverage --reporter=default --reporter=json --outputFile.json=.test-results/vitest.json "$@"
status=$?

node -e '
  const fs = require("fs");
  let r;
  try { r = JSON.parse(fs.readFileSync(".test-results/vitest.json", "utf8")); } catch { console.log("0 passed, 1 failed"); process.exit(0); }
  const skipped = (r.numPendingTests || 0) + (r.numTodoTests || 0);
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed, ${skipped} skipped`);
'
exit $status
