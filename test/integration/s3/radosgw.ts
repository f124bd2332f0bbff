/**
 * A real Ceph RADOS Gateway for the S3 tests, one per test FILE: started in
 * beforeAll by scripts/radosgw.sh (one monitor, one memstore OSD, radosgw's
 * beast frontend on 127.0.0.1), stopped in afterAll (every daemon by its pid,
 * its temporary directory removed). The Debian packages ceph-mon, ceph-osd,
 * radosgw and ceph-common must be installed (scripts/test.sh installs them);
 * when they are missing the tests FAIL with the packages to install.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll } from 'vitest';

const execFileP = promisify(execFile);
const SCRIPT = fileURLToPath(new URL('../../../scripts/radosgw.sh', import.meta.url));

export interface Radosgw {
  readonly endpoint: string;
  readonly bucket: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly region: string;
  /** The cluster's directory (ceph.conf is there, for radosgw-admin -c). */
  readonly dir: string;
  /** Environment for a child (the CLI) that reads credentials the AWS way. */
  readonly env: Record<string, string>;
}

/** Start the store in beforeAll (the test file's hooks get `timeout` ms); `get()` returns it. */
export function radosgwPerFile(timeout = 240_000): { get(): Radosgw } {
  let rgw: Radosgw | undefined;
  let parent: string | undefined;
  beforeAll(async () => {
    parent = fs.mkdtempSync(path.join(os.tmpdir(), 'nbd-engine-rgw-'));
    const dir = path.join(parent, 'cluster');
    const { stdout } = await execFileP('bash', [SCRIPT, 'start', dir], { timeout, maxBuffer: 16 * 1024 * 1024 });
    const vars = Object.fromEntries(
      stdout.split('\n').flatMap((l) => (/^[A-Z0-9_]+=/.test(l) ? [[l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]] : [])),
    ) as Record<string, string>;
    rgw = {
      endpoint: vars.S3_ENDPOINT!,
      bucket: vars.S3_BUCKET!,
      accessKeyId: vars.AWS_ACCESS_KEY_ID!,
      secretAccessKey: vars.AWS_SECRET_ACCESS_KEY!,
      region: vars.AWS_REGION!,
      dir: vars.RADOSGW_DIR!,
      env: {
        AWS_ACCESS_KEY_ID: vars.AWS_ACCESS_KEY_ID!,
        AWS_SECRET_ACCESS_KEY: vars.AWS_SECRET_ACCESS_KEY!,
        AWS_REGION: vars.AWS_REGION!,
      },
    };
  }, timeout);
  afterAll(async () => {
    if (parent) {
      await execFileP('bash', [SCRIPT, 'stop', path.join(parent, 'cluster')], { timeout: 60_000 });
      fs.rmSync(parent, { recursive: true, force: true });
    }
  }, 60_000);
  return {
    get: () => {
      if (!rgw) throw new Error('radosgw did not start (see beforeAll)');
      return rgw;
    },
  };
}

/** The radosgw daemon's pid (the last line of the cluster's pids file), to stop or pause it in a test. */
export function radosgwPid(rgw: Radosgw): number {
  const pids = fs.readFileSync(path.join(rgw.dir, 'pids'), 'utf8').trim().split('\n');
  return Number(pids[pids.length - 1]);
}

/** radosgw-admin against the test cluster (e.g. suspend the user to make credentials fail). */
export async function radosgwAdmin(rgw: Radosgw, args: string[]): Promise<string> {
  const { stdout } = await execFileP('radosgw-admin', ['-c', path.join(rgw.dir, 'ceph.conf'), ...args], { timeout: 60_000 });
  return stdout;
}
