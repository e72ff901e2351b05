import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { chown, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '@reins/testing';

const exec = promisify(execFile);

/** A throwaway PostgreSQL cluster in a temp dir (default durability: fsync on). */
export interface PgCluster {
  /** `postgresql://postgres@127.0.0.1:<port>/postgres` (trust auth, loopback only). */
  readonly url: string;
  /** Stops the server (fast shutdown) and removes the cluster. */
  stop(): Promise<void>;
}

/** How to get PostgreSQL when it is missing (printed with the reason the row is skipped). */
export const POSTGRES_HINT =
  'install it (Debian: DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql) or set ' +
  'PG_BIN to the directory holding initdb and pg_ctl';

/** `PG_BIN`, else the newest /usr/lib/postgresql/<version>/bin that has initdb; or undefined. */
export function findPostgresBin(): string | undefined {
  const fromEnv = process.env['PG_BIN'];
  if (fromEnv) return existsSync(join(fromEnv, 'initdb')) ? fromEnv : undefined;
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => existsSync(join(root, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(root, versions[0], 'bin');
}

/** The uid/gid of the `postgres` user (initdb refuses to run as root), when we are root. */
async function dropTo(): Promise<{ uid: number; gid: number } | undefined> {
  if (process.getuid?.() !== 0) return undefined;
  try {
    const uid = Number((await exec('id', ['-u', 'postgres'])).stdout.trim());
    const gid = Number((await exec('id', ['-g', 'postgres'])).stdout.trim());
    return { uid, gid };
  } catch {
    throw new Error('running as root and there is no `postgres` user for initdb to run as');
  }
}

/**
 * initdb + pg_ctl start of a new cluster in a temp dir on a free port of 127.0.0.1, with the
 * server's default durability (fsync, synchronous_commit and full_page_writes on; only initdb's
 * own bootstrap skips its final sync). Throws with the reason when it cannot be started.
 */
export async function startPostgres(): Promise<PgCluster> {
  const bin = findPostgresBin();
  if (!bin) throw new Error(`PostgreSQL (initdb) not found: ${POSTGRES_HINT}`);
  const user = await dropTo();
  const dir = await mkdtemp(join(tmpdir(), 'reins-pg-'));
  const data = join(dir, 'data');
  const log = join(dir, 'server.log');
  const as = user ? { uid: user.uid, gid: user.gid } : {};
  const pgCtl = join(bin, 'pg_ctl');
  let started = false;
  try {
    if (user) await chown(dir, user.uid, user.gid);
    await exec(
      join(bin, 'initdb'),
      ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-sync'],
      { ...as, cwd: dir },
    );
    const port = await freePort();
    const options = `-p ${port} -k ${dir} -c listen_addresses=127.0.0.1`;
    await exec(pgCtl, ['-D', data, '-o', options, '-l', log, '-w', '-t', '60', 'start'], {
      ...as,
      cwd: dir,
    });
    started = true;
    return {
      url: `postgresql://postgres@127.0.0.1:${port}/postgres`,
      stop: async () => {
        await exec(pgCtl, ['-D', data, '-m', 'fast', '-w', 'stop'], { ...as, cwd: dir }).catch(
          () => undefined,
        );
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    const serverLog = await readFile(log, 'utf8').catch(() => '');
    if (started)
      await exec(pgCtl, ['-D', data, '-m', 'immediate', 'stop'], as).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    const detail = err instanceof Error ? err.message : String(err);
    throw new Error(`PostgreSQL could not be started: ${detail}\n${serverLog.slice(-2000)}`, {
      cause: err,
    });
  }
}
