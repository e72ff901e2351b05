import { isAbsolute, relative } from 'node:path';
import { SECURE_ROLES, type SecureRole } from '@reins/runtime';
import { ExitCode, usageError } from '../errors.js';
import { initKeyDir, projectKeyDir, type KeyDirReport, type KeyRoles } from '../key-dir.js';
import { createStyle, printJson, println } from '../output.js';
import { requireId } from './ids.js';

/** Options of `reins keys init`. */
export interface KeysInitOptions {
  /** Key directory (default `.reins/secure`). */
  dir?: string;
  prefix?: string;
  /** Comma-separated roles the planner user may serve (default: any). */
  plannerRoles?: string;
  /** Comma-separated roles the executor user may serve (default: any). */
  executorRoles?: string;
  /** Replace every existing seed. */
  force?: boolean;
  /** Keep existing seeds, generate the missing ones. */
  keepExisting?: boolean;
  /** Comma-separated roles whose seed to replace (the others are kept). */
  rotate?: string;
  json?: boolean;
}

const commaList = (value: string) =>
  value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);

function roleList(value: string | undefined, flag: string): string[] | undefined {
  if (value === undefined) return undefined;
  const list = commaList(value);
  if (list.length === 0) throw usageError(`${flag} needs at least one role`);
  return list.map((r) => requireId(r, `${flag} role`));
}

function rotateList(value: string | undefined): SecureRole[] | undefined {
  if (value === undefined) return undefined;
  const list = commaList(value);
  const known = new Set<string>(SECURE_ROLES);
  const bad = list.filter((r) => !known.has(r));
  if (list.length === 0 || bad.length > 0) {
    throw usageError(
      `--rotate takes roles among ${SECURE_ROLES.join(', ')}${bad.length ? `, not ${bad.join(', ')}` : ''}`,
    );
  }
  return list as SecureRole[];
}

/** The environment each process needs, by role. */
function seedEnv(
  report: Pick<KeyDirReport, 'keys'>,
): Record<SecureRole, { REINS_NKEY_SEED_FILE: string }> {
  return Object.fromEntries(
    report.keys.map((k) => [k.role, { REINS_NKEY_SEED_FILE: k.file }]),
  ) as Record<SecureRole, { REINS_NKEY_SEED_FILE: string }>;
}

/** A path as the user would type it: relative below the working directory, else absolute. */
function shown(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel : path;
}

const WHO: Record<SecureRole, string> = {
  supervisor: 'supervisor service',
  planner: 'planner services',
  executor: 'executor services',
  client: 'the reins CLI and @reins/client apps',
};

/**
 * `reins keys init`: writes a secure-mode key directory (see `initKeyDir`) and prints the files,
 * public keys and the `REINS_NKEY_SEED_FILE` each process needs — never a seed. Existing seeds
 * are refused (`KEYS_EXIST`, exit 2) unless `--keep-existing`, `--rotate <roles>` or `--force`
 * says what to do with them. JSON: `{ dir, prefix, roles, keys, authConfig, natsConfig,
 * metadata, env, warnings }`.
 */
export async function keysInitCommand(options: KeysInitOptions): Promise<ExitCode> {
  if (options.force && options.keepExisting) {
    throw usageError('--force replaces every seed and --keep-existing keeps them: give one');
  }
  if (options.force && options.rotate !== undefined) {
    throw usageError('--force replaces every seed already; drop --rotate (or --force)');
  }
  const planner = roleList(options.plannerRoles, '--planner-roles');
  const executor = roleList(options.executorRoles, '--executor-roles');
  const roles: KeyRoles | undefined =
    planner || executor
      ? { ...(planner ? { planner } : {}), ...(executor ? { executor } : {}) }
      : undefined;
  const rotate = rotateList(options.rotate);
  const report = await initKeyDir({
    dir: options.dir ?? projectKeyDir(),
    ...(options.prefix !== undefined ? { prefix: options.prefix } : {}),
    ...(roles ? { roles } : {}),
    ...(rotate ? { rotate } : {}),
    replaceAll: options.force === true,
    keepExisting: options.keepExisting === true,
  });
  const env = seedEnv(report);
  if (options.json) {
    printJson({ ...report, env });
    return ExitCode.ok;
  }

  const s = createStyle();
  const any = (list: string[] | undefined) => (list ? list.join(',') : 'any');
  println(
    `${s.green('✓')} secure-mode keys in ${s.bold(shown(report.dir))} ${s.dim(
      `(prefix ${report.prefix}, planner roles ${any(report.roles.planner)}, executor roles ${any(report.roles.executor)})`,
    )}`,
  );
  const files = [
    ...report.keys.map((k) => shown(k.file)),
    shown(report.authConfig),
    shown(report.natsConfig.file),
    shown(report.metadata),
  ];
  const width = Math.max(...files.map((f) => f.length));
  for (const k of report.keys) {
    const action = k.action === 'kept' ? s.dim(k.action) : s.yellow(k.action);
    println(
      `  ${k.role.padEnd(10)}  ${shown(k.file).padEnd(width)}  ${s.dim(k.publicKey)}  ${action}`,
    );
  }
  const other = (file: string, what: string) =>
    println(`  ${''.padEnd(10)}  ${shown(file).padEnd(width)}  ${s.dim(what)}`);
  other(report.authConfig, 'nats-server authorization block (public keys only)');
  other(
    report.natsConfig.file,
    report.natsConfig.written
      ? 'example server config that includes it'
      : 'example server config (exists; left as is)',
  );
  other(report.metadata, 'prefix, roles and public keys (no secrets)');
  for (const w of report.warnings) println(`${s.yellow('!')} ${w}`);
  println();
  println('Seeds are credentials (mode 0600): never commit, copy around or print them.');
  println('Give each process only its own role’s seed:');
  for (const role of SECURE_ROLES) {
    println(
      `  ${role.padEnd(10)}  REINS_NKEY_SEED_FILE=${env[role].REINS_NKEY_SEED_FILE}  ${s.dim(WHO[role])}`,
    );
  }
  const replaced = report.keys.filter((k) => k.action === 'replaced').map((k) => k.role);
  if (replaced.length > 0) {
    println();
    println(
      s.yellow(
        `Replaced: ${replaced.join(', ')}. Reload nats-server with the new ${shown(report.authConfig)} ` +
          '(nats-server --signal reload), then restart those processes: their old seeds no longer work.',
      ),
    );
  }
  println();
  println('next:');
  println(
    `  nats-server -c ${shown(report.natsConfig.file)}   ${s.dim('# or include reins-auth.conf in your own config')}`,
  );
  println(
    `  reins up --secure --keys ${shown(report.dir)}   ${s.dim('# a local swarm with these keys')}`,
  );
  return ExitCode.ok;
}
