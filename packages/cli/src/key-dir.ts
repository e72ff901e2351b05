import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync } from 'node:fs';
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { z } from 'zod';
import { DEFAULT_PREFIX } from '@reins/protocol';
import {
  SECURE_ROLES,
  createSecureConfig,
  loadNkeySeed,
  type SecureConfig,
  type SecureRole,
} from '@reins/runtime';
import { CliError, ExitCode } from './errors.js';

/** Where `reins keys init` and `reins up` keep keys unless told otherwise, below the project root. */
export const DEFAULT_KEY_DIR = '.reins/secure';
/** Files whose directory is a project root: the search for `.reins/` stops there. */
const PROJECT_MARKERS = ['pnpm-workspace.yaml', '.git'] as const;
/** The nats-server `authorization` block (public keys and permissions only). */
export const AUTH_CONF = 'reins-auth.conf';
/** An example nats-server config that includes `AUTH_CONF`; written once, never overwritten. */
export const NATS_CONF = 'nats.conf';
/** Prefix, roles and public keys the directory was made for (no secrets). */
export const KEYS_META = 'reins-keys.json';

/**
 * The key directory of the current project, for `reins up`, `reins keys init` and every command
 * that needs the client seed: `$REINS_HOME/secure` when `REINS_HOME` is set; else the first
 * `.reins/secure` holding a client seed on the way up from `cwd` to the project root (the
 * nearest directory holding `pnpm-workspace.yaml` or `.git`); else `<project root>/.reins/secure`,
 * or `<cwd>/.reins/secure` outside any project — where keys are created. Never throws.
 */
export function projectKeyDir(
  cwd: string = process.cwd(),
  env: NodeJS.ProcessEnv = process.env,
): string {
  const home = env['REINS_HOME']?.trim();
  if (home) return resolve(cwd, home, 'secure');
  const start = resolve(cwd);
  for (let dir = start; ; dir = dirname(dir)) {
    const candidate = join(dir, DEFAULT_KEY_DIR);
    if (existsSync(seedFile(candidate, 'client'))) return candidate;
    if (PROJECT_MARKERS.some((m) => existsSync(join(dir, m)))) return candidate;
    if (dirname(dir) === dir) return join(start, DEFAULT_KEY_DIR);
  }
}

/** The seed file of one role: `<dir>/<role>.nk`. */
export function seedFile(dir: string, role: SecureRole): string {
  return join(dir, `${role}.nk`);
}

/** Actor roles the planner and executor users may serve; absent means any role. */
export interface KeyRoles {
  planner?: string[];
  executor?: string[];
}

const KeysMeta = z.object({
  version: z.literal(1),
  prefix: z.string(),
  roles: z.object({
    planner: z.array(z.string()).optional(),
    executor: z.array(z.string()).optional(),
  }),
  publicKeys: z.record(z.string(), z.string()),
});
/** Contents of `reins-keys.json`. */
export type KeysMeta = z.infer<typeof KeysMeta>;

/** What happened to one role's seed. */
export type SeedAction = 'generated' | 'kept' | 'replaced';

/** One role's seed file, as `reins keys init` reports it (the seed itself never). */
export interface KeyFileReport {
  role: SecureRole;
  file: string;
  publicKey: string;
  action: SeedAction;
}

/** What `initKeyDir` should do. */
export interface KeyDirPlan {
  /** The key directory (made absolute). */
  dir: string;
  /** Subject prefix; default: the one recorded in the directory, else `REINS_PREFIX`, else `reins.v1`. */
  prefix?: string;
  /** Roles of the planner and executor users; default: the ones recorded, else any. */
  roles?: KeyRoles;
  /** Replace every existing seed (`--force`). */
  replaceAll?: boolean;
  /** Replace these roles' seeds and keep the others (`--rotate`). */
  rotate?: readonly SecureRole[];
  /** Keep existing seeds and generate only the missing ones (`--keep-existing`). */
  keepExisting?: boolean;
}

/** What `initKeyDir` wrote. */
export interface KeyDirReport {
  dir: string;
  prefix: string;
  roles: KeyRoles;
  keys: KeyFileReport[];
  authConfig: string;
  natsConfig: { file: string; written: boolean };
  metadata: string;
  /** Files or folders others may read, and other things a reviewer should know. */
  warnings: string[];
}

const keysError = (message: string, code: string, hint: string, cause?: unknown) =>
  new CliError(message, {
    exitCode: ExitCode.usage,
    code,
    hint,
    ...(cause === undefined ? {} : { cause }),
  });

function looseMode(path: string): number | undefined {
  try {
    const mode = lstatSync(path).mode & 0o777;
    return mode & 0o077 ? mode : undefined;
  } catch {
    return undefined;
  }
}

/** Writes a file under a temp name and renames it into place: never a half-written seed. */
async function writeAtomic(path: string, text: string, mode: number): Promise<void> {
  const temp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(temp, text, { mode, flag: 'wx' });
    // The umask may have cleared bits of `mode`; never may it leave a seed readable by others.
    await chmod(temp, mode);
    await rename(temp, path);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
}

async function readMeta(dir: string): Promise<KeysMeta | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, KEYS_META), 'utf8');
  } catch {
    return undefined;
  }
  try {
    return KeysMeta.parse(JSON.parse(text));
  } catch {
    // Unreadable metadata only loses defaults; the seeds and server config are the truth.
    return undefined;
  }
}

async function readSeed(dir: string, role: SecureRole): Promise<string> {
  const file = seedFile(dir, role);
  try {
    const seed = await loadNkeySeed({ file });
    if (seed === undefined) throw new Error('empty');
    return seed;
  } catch (cause) {
    throw keysError(
      `${file} does not hold a user nkey seed: ${(cause as Error).message}`,
      'KEYS_INVALID',
      `replace it with \`reins keys init --dir ${dir} --rotate ${role}\``,
      cause,
    );
  }
}

function normaliseRoles(roles: {
  planner?: string[] | undefined;
  executor?: string[] | undefined;
}): KeyRoles {
  return {
    ...(roles.planner?.length ? { planner: roles.planner } : {}),
    ...(roles.executor?.length ? { executor: roles.executor } : {}),
  };
}

function secureConfig(
  prefix: string,
  roles: KeyRoles,
  seeds: Partial<Record<SecureRole, string>>,
): SecureConfig {
  try {
    return createSecureConfig({ prefix, roles, seeds });
  } catch (cause) {
    throw keysError(
      `cannot create the secure-mode config: ${(cause as Error).message}`,
      'KEYS_INVALID',
      'prefixes are dot-separated tokens (reins.v1); roles are 1-64 characters of A-Z a-z 0-9 _ -',
      cause,
    );
  }
}

function natsConfExample(prefix: string): string {
  return [
    '# Example nats-server configuration for Reins secure mode (written once by `reins keys init`;',
    '# edit it freely). Start the server with: nats-server -c nats.conf',
    `# Subject prefix of the deployment: ${prefix}. See docs/secure-mode.md.`,
    '# Listens on localhost only: add a tls { } block before exposing it (docs/secure-mode.md#tls).',
    'listen: 127.0.0.1:4222',
    '# A relative store_dir is relative to the directory nats-server starts in.',
    '# With nats-server >= 2.10 add `sync_interval: always` inside the block: every write is then',
    '# flushed to disk before it is acknowledged (ledger and audit survive a machine crash).',
    'jetstream { store_dir: "./nats-store" }',
    '# One nkey user per Reins role with least-privilege permissions (regenerated by reins keys init).',
    `include ./${AUTH_CONF}`,
    '',
  ].join('\n');
}

/**
 * Creates or updates a secure-mode key directory: one nkey seed per role (`<role>.nk`, mode
 * 0600, in a 0700 directory), the nats-server authorization block (`reins-auth.conf`), an
 * example `nats.conf` (only when missing), `reins-keys.json` and a `.gitignore` that keeps the
 * whole directory out of git (only when missing). Existing seeds are never
 * overwritten unless `replaceAll` or `rotate` names them: without `keepExisting` they are a
 * `KEYS_EXIST` error (exit 2) and nothing is written. Bad prefixes, roles or existing seed
 * files are usage errors (exit 2) raised before anything is written.
 */
export async function initKeyDir(plan: KeyDirPlan): Promise<KeyDirReport> {
  const dir = resolve(plan.dir);
  if (existsSync(dir) && !lstatSync(dir).isDirectory()) {
    throw keysError(`${dir} is not a directory`, 'KEYS_INVALID', 'pick another --dir');
  }
  const meta = existsSync(dir) ? await readMeta(dir) : undefined;
  const prefix = plan.prefix ?? meta?.prefix ?? (process.env['REINS_PREFIX'] || DEFAULT_PREFIX);
  const roles = normaliseRoles(plan.roles ?? meta?.roles ?? {});
  const rotate = new Set(plan.rotate ?? []);

  const actions = new Map<SecureRole, SeedAction>();
  const clash: string[] = [];
  for (const role of SECURE_ROLES) {
    const exists = existsSync(seedFile(dir, role));
    if (!exists) actions.set(role, 'generated');
    else if (plan.replaceAll || rotate.has(role)) actions.set(role, 'replaced');
    else if (plan.keepExisting || rotate.size > 0) actions.set(role, 'kept');
    else clash.push(seedFile(dir, role));
  }
  if (clash.length > 0) {
    throw keysError(
      `secure-mode keys already exist in ${dir}: ${clash.map((f) => f.slice(dir.length + 1)).join(', ')}; nothing was written`,
      'KEYS_EXIST',
      `keep them and generate only missing ones: --keep-existing · replace one role: --rotate <role> · replace every seed: --force`,
    );
  }

  const warnings: string[] = [];
  const kept: Partial<Record<SecureRole, string>> = {};
  for (const role of SECURE_ROLES) {
    if (actions.get(role) !== 'kept') continue;
    kept[role] = await readSeed(dir, role);
    const loose = looseMode(seedFile(dir, role));
    if (loose !== undefined) {
      warnings.push(
        `${seedFile(dir, role)} is readable by group or others (mode ${loose.toString(8)}): chmod 600 it`,
      );
    }
  }
  // Validates prefix and roles before anything touches the disk.
  const config = secureConfig(prefix, roles, kept);

  if (existsSync(dir)) {
    const loose = looseMode(dir);
    if (loose !== undefined) {
      warnings.push(
        `${dir} is open to group or others (mode ${loose.toString(8)}): chmod 700 it so only you can list and replace the seeds`,
      );
    }
  } else {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    await chmod(dir, 0o700);
  }
  // Seeds never belong in a repository, whatever the project's own .gitignore says.
  const gitignore = join(dir, '.gitignore');
  if (!existsSync(gitignore))
    await writeAtomic(gitignore, '# reins keys init: seeds are credentials\n*\n', 0o644);

  const keys: KeyFileReport[] = [];
  for (const role of SECURE_ROLES) {
    const action = actions.get(role) ?? 'kept';
    const user = config.users[role];
    if (action !== 'kept') await writeAtomic(seedFile(dir, role), `${user.seed}\n`, 0o600);
    keys.push({ role, file: seedFile(dir, role), publicKey: user.publicKey, action });
  }
  // Public keys and permissions only: the server's operator may read it.
  const authConfig = join(dir, AUTH_CONF);
  await writeAtomic(authConfig, config.serverConfig, 0o644);
  const natsFile = join(dir, NATS_CONF);
  const writeNats = !existsSync(natsFile);
  if (writeNats) await writeAtomic(natsFile, natsConfExample(prefix), 0o644);
  const metadata = join(dir, KEYS_META);
  const record: KeysMeta = {
    version: 1,
    prefix,
    roles,
    publicKeys: Object.fromEntries(keys.map((k) => [k.role, k.publicKey])),
  };
  await writeAtomic(metadata, `${JSON.stringify(record, null, 2)}\n`, 0o644);
  return {
    dir,
    prefix,
    roles,
    keys,
    authConfig,
    natsConfig: { file: natsFile, written: writeNats },
    metadata,
    warnings,
  };
}

/** A complete key directory, checked: every seed loads and is a user of the server config. */
export interface KeyDir {
  dir: string;
  seedFiles: Record<SecureRole, string>;
  /** Text of `reins-auth.conf`. */
  authConfig: string;
  /** `reins-keys.json`, when present and readable. */
  meta: KeysMeta | undefined;
}

/**
 * Reads a key directory for `reins up --secure`. Undefined when it holds no seed at all (the
 * caller may generate one). Throws a usage error (exit 2) when it is incomplete
 * (`KEYS_INCOMPLETE`), a seed does not load (`KEYS_INVALID`) or `reins-auth.conf` does not
 * list a seed's public key (`KEYS_MISMATCH`, e.g. a seed file replaced by hand).
 */
export async function readKeyDir(dirPath: string): Promise<KeyDir | undefined> {
  const dir = resolve(dirPath);
  const present = SECURE_ROLES.filter((r) => existsSync(seedFile(dir, r)));
  if (present.length === 0) return undefined;
  const repair = `reins keys init --dir ${dir} --keep-existing`;
  const missing = SECURE_ROLES.filter((r) => !present.includes(r));
  if (missing.length > 0) {
    throw keysError(
      `the key directory ${dir} has no seed for ${missing.join(', ')}`,
      'KEYS_INCOMPLETE',
      `generate the missing ones (and a matching server config) with \`${repair}\``,
    );
  }
  let authConfig: string;
  try {
    authConfig = await readFile(join(dir, AUTH_CONF), 'utf8');
  } catch (cause) {
    throw keysError(
      `the key directory ${dir} has no ${AUTH_CONF}`,
      'KEYS_INCOMPLETE',
      `write it from the seeds with \`${repair}\``,
      cause,
    );
  }
  const seeds: Partial<Record<SecureRole, string>> = {};
  for (const role of SECURE_ROLES) seeds[role] = await readSeed(dir, role);
  const users = secureConfig(DEFAULT_PREFIX, {}, seeds).users;
  const stale = SECURE_ROLES.filter((r) => !authConfig.includes(`"${users[r].publicKey}"`));
  if (stale.length > 0) {
    throw keysError(
      `${join(dir, AUTH_CONF)} does not list the public key of ${stale.join(', ')} (the seeds changed after it was written)`,
      'KEYS_MISMATCH',
      `rewrite it from the seeds with \`${repair}\``,
    );
  }
  const seedFiles = Object.fromEntries(SECURE_ROLES.map((r) => [r, seedFile(dir, r)])) as Record<
    SecureRole,
    string
  >;
  return { dir, seedFiles, authConfig, meta: await readMeta(dir) };
}
