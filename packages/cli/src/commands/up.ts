import { existsSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ReinsClient } from '@reins/client';
import { DEFAULT_PREFIX, Heartbeat, createGrantSigner, decode } from '@reins/protocol';
import { INSECURE_WARNING, syncAlwaysConfig } from '@reins/runtime';
import { loadPolicyFile, loadSigningKey } from '@reins/supervisor';
import { natsUrl, openClient, type CommonOptions } from '../connection.js';
import { CliError, ExitCode, explainError, usageError } from '../errors.js';
import { initKeyDir, projectKeyDir, readKeyDir, type KeyDir } from '../key-dir.js';
import { formatLogLine, parseLogRecord } from '../log-line.js';
import {
  INSTALL_NATS_HINT,
  findNatsServer,
  natsServerVersion,
  startLocalNats,
  type LocalNats,
} from '../nats-server.js';
import { createStyle, formatDuration, printJson, println, type Style } from '../output.js';
import { startServices, type ServiceSpec, type Services } from '../swarm.js';
import { requireId } from './ids.js';

/** Options of `reins up`. */
export interface UpOptions extends CommonOptions {
  planners?: number;
  executors?: number;
  /** Role the planners serve (default `planner`). */
  role?: string;
  sandbox?: string;
  policy?: string;
  /** Port of the nats-server `reins up` starts (default: a free one). */
  port?: number;
  /** `REINS_LOG_LEVEL` of the services (default `info`). */
  logLevel?: string;
  /** Give up when the swarm is not ready after this many seconds (default 30). */
  readyTimeout?: number;
  /** Secure mode: one nkey user per role (docs/secure-mode.md). The default; the flag is kept. */
  secure?: boolean;
  /** No credentials at all: any connection may publish anything (`--insecure`). */
  insecure?: boolean;
  /** Key directory of secure mode (default `projectKeyDir()`); generated when it holds no keys. */
  keys?: string;
}

/**
 * The policy `reins up` uses without `--policy`: read and list files, write Markdown at the
 * sandbox root, calculator and scratchpad. Everything else is denied.
 */
export const DEFAULT_POLICY = {
  version: 1,
  rules: [
    { id: 'files.read', match: { tool: 'read_file' }, effect: 'allow' },
    { id: 'files.list', match: { tool: 'list_files' }, effect: 'allow' },
    {
      id: 'files.write.reports',
      description: 'Agents may only write Markdown files at the sandbox root.',
      match: { tool: 'write_file' },
      effect: 'allow',
      args: [{ path: 'path', pattern: '[A-Za-z0-9_-]+\\.md' }],
    },
    { id: 'math', match: { tool: 'calculator' }, effect: 'allow' },
    { id: 'scratch', match: { tool: 'scratch_*' }, effect: 'allow' },
  ],
} as const;

function count(v: number | undefined, name: string, dflt: number, min = 0): number {
  const n = v ?? dflt;
  if (!Number.isInteger(n) || n < min || n > 64)
    throw usageError(
      `--${name} must be a whole number from ${min} to 64`,
      min > 0
        ? `a swarm without ${name} admits no run: every \`reins run\` would be refused (NO_PLANNER)`
        : undefined,
    );
  return n;
}

/** Gives a fresh sandbox something to read, so the suggested first run has work to do. */
async function seedSandbox(dir: string): Promise<void> {
  await mkdir(join(dir, 'docs'));
  await writeFile(
    join(dir, 'docs', 'reins.md'),
    '# Reins\n\nReins runs swarms of LLM agents as actors in separate processes that talk only over NATS.\n' +
      'A supervisor grants every model call and tool call, keeps budgets, checks policy and can halt any agent.\n',
  );
  await writeFile(
    join(dir, 'docs', 'halts.md'),
    '# Halts\n\nA halt writes a marker that new actors read, then is broadcast; matching work is aborted and acknowledged.\n' +
      'Agents that do not acknowledge are fenced: their grants are refused.\n',
  );
}

/** Resolves the signing seed: the configured one (kept in the environment) or a new one. */
function signingKey(): { env: Record<string, string>; publicKey: string; source: string } {
  if (process.env['REINS_SUPERVISOR_SEED'] || process.env['REINS_SUPERVISOR_SEED_FILE']) {
    try {
      const { signer, source } = loadSigningKey({ allowDevKey: false });
      return {
        env: {},
        publicKey: signer.publicKey,
        source: source === 'envFile' ? 'REINS_SUPERVISOR_SEED_FILE' : 'REINS_SUPERVISOR_SEED',
      };
    } catch (cause) {
      throw new CliError(
        `the configured supervisor key does not load: ${(cause as Error).message}`,
        {
          exitCode: ExitCode.usage,
          cause,
          hint: 'fix REINS_SUPERVISOR_SEED(_FILE), or unset both to let `reins up` generate a key for this swarm',
        },
      );
    }
  }
  const { seed, signer } = createGrantSigner();
  return {
    env: { REINS_SUPERVISOR_SEED: seed },
    publicKey: signer.publicKey,
    source: 'generated for this swarm',
  };
}

/** The keys of a secure swarm, and whether `reins up` just made them. */
interface SecureSetup {
  keys: KeyDir;
  generated: boolean;
}

/**
 * Finds (or, for the nats-server `reins up` starts, generates) the key directory of a secure
 * swarm and checks it fits: its server config was written for this prefix and lets the planner
 * and executor users serve the swarm's roles. Misfits are usage errors (exit 2) naming the
 * `reins keys init` that repairs them; with an external NATS, missing keys are too (its
 * server could not know freshly generated ones).
 */
async function prepareSecureKeys(
  dirOption: string,
  planners: string,
  external: string | undefined,
): Promise<SecureSetup> {
  const dir = resolve(dirOption);
  const prefix = process.env['REINS_PREFIX'] || DEFAULT_PREFIX;
  let keys = await readKeyDir(dir);
  let generated = false;
  if (!keys) {
    if (external) {
      throw new CliError(`no secure-mode keys in ${dir} for the NATS server at ${external}`, {
        exitCode: ExitCode.usage,
        code: 'KEYS_MISSING',
        hint: `create them with \`reins keys init --dir ${dir}\`, start that nats-server with ${dir}/reins-auth.conf, then run this again; or, for a server without credentials on purpose, \`reins up --insecure\``,
      });
    }
    // Least privilege for this swarm: the planner user serves its role, the executor user `executor`.
    await initKeyDir({ dir, prefix, roles: { planner: [planners], executor: ['executor'] } });
    keys = await readKeyDir(dir);
    generated = true;
    if (!keys) throw new CliError(`the keys written to ${dir} cannot be read back`);
  }
  const meta = keys.meta;
  const mismatch = (message: string, fix: string) =>
    new CliError(message, {
      exitCode: ExitCode.usage,
      code: 'KEYS_MISMATCH',
      hint: `${fix} (then restart nats-servers that use ${dir}/reins-auth.conf)`,
    });
  if (meta && meta.prefix !== prefix) {
    throw mismatch(
      `the keys in ${dir} were made for the subject prefix ${meta.prefix}, this swarm uses ${prefix}`,
      `set REINS_PREFIX=${meta.prefix}, or rewrite the server config: \`reins keys init --dir ${dir} --keep-existing --prefix ${prefix}\``,
    );
  }
  const allowed = meta?.roles.planner;
  if (allowed && !allowed.includes(planners)) {
    throw mismatch(
      `the keys in ${dir} let the planner user serve ${allowed.join(', ')}, not ${planners}`,
      `allow it: \`reins keys init --dir ${dir} --keep-existing --planner-roles ${[...allowed, planners].join(',')}\``,
    );
  }
  const executorRoles = meta?.roles.executor;
  if (executorRoles && !executorRoles.includes('executor')) {
    throw mismatch(
      `the keys in ${dir} let the executor user serve ${executorRoles.join(', ')}, not executor`,
      `allow it: \`reins keys init --dir ${dir} --keep-existing --executor-roles ${[...executorRoles, 'executor'].join(',')}\``,
    );
  }
  return { keys, generated };
}

/** Resolves once every agent id in `expected` has heartbeated as running (or throws). */
async function waitForAgents(
  client: ReinsClient,
  expected: ReadonlySet<string>,
  timeoutMs: number,
  failed: Promise<never>,
  onReady: (agentId: string) => void,
): Promise<void> {
  const seen = new Set<string>();
  let done: (() => void) | undefined;
  const allUp = new Promise<void>((r) => (done = r));
  const sub = client.runtime.nc.subscribe(client.runtime.subjects.heartbeat(), {
    callback: (err, m) => {
      if (err) return;
      try {
        const hb = decode(Heartbeat, m.data, { name: 'heartbeat' });
        if (expected.has(hb.agentId) && hb.status === 'running' && !seen.has(hb.agentId)) {
          seen.add(hb.agentId);
          onReady(hb.agentId);
          if (seen.size === expected.size) done?.();
        }
      } catch {
        // Not a heartbeat we can read: not one of ours.
      }
    },
  });
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      allUp,
      failed,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          const missing = [...expected].filter((id) => !seen.has(id));
          reject(
            new CliError(
              `the swarm did not come up in time (--ready-timeout): no heartbeat from ${missing.join(', ')}`,
              {
                hint: 'see the service logs above; `reins doctor` checks the setup',
              },
            ),
          );
        }, timeoutMs);
      }),
    ]);
  } finally {
    clearTimeout(timer);
    sub.unsubscribe();
  }
}

/**
 * `reins up`: a local swarm. Starts nats-server with JetStream on a temp store when no NATS
 * URL is given (`--nats` / `NATS_URL`), then one supervisor and N planners and executors as
 * child processes with a signing key generated for the swarm; multiplexes their logs with a
 * coloured `[name]` prefix; prints the NATS_URL to use once every agent heartbeats; and on
 * Ctrl-C / SIGTERM stops the services (SIGTERM, wait), then nats-server. A second Ctrl-C
 * kills everything at once. Exit 0 after a requested stop; 1 when the swarm failed.
 *
 * Secure by default (`--secure` is accepted and changes nothing): nats-server runs with the
 * project key directory's `reins-auth.conf` (`projectKeyDir()`, or `--keys`; the keys are
 * generated first when it holds none, and every `reins` command in the project finds the client
 * seed there), each service connects with its role's `REINS_NKEY_SEED_FILE`, the CLI with the
 * client seed, and the supervisor (which alone may create the streams and buckets) is up before
 * the planners and executors start. With an external NATS and no keys it refuses to start
 * (`KEYS_MISSING`). `--insecure` runs without any credentials and warns once on stderr (the
 * services are told, with `REINS_INSECURE=1`, not to repeat it).
 */
export async function upCommand(options: UpOptions, signal: AbortSignal): Promise<ExitCode> {
  const style = createStyle();
  const errStyle = createStyle(process.stderr);
  const json = options.json === true;
  const planners = count(options.planners, 'planners', 1, 1);
  const executors = count(options.executors, 'executors', 1);
  const role = requireId(options.role ?? 'planner', 'role');
  const external = options.nats ?? (process.env['NATS_URL'] || undefined);
  if (options.secure && options.insecure) {
    throw usageError('give --secure or --insecure, not both', 'secure mode is the default');
  }
  if (options.keys !== undefined && options.insecure) {
    throw usageError('--keys only applies in secure mode', 'drop --insecure, or drop --keys');
  }
  const insecure = options.insecure === true;
  if (insecure) process.stderr.write(`${errStyle.yellow('reins: warning:')} ${INSECURE_WARNING}\n`);
  if (external && options.port !== undefined) {
    throw usageError(
      '--port only applies when `reins up` starts nats-server, but a NATS URL is set',
      'unset NATS_URL (and --nats) or drop --port',
    );
  }
  if (
    options.port !== undefined &&
    (!Number.isInteger(options.port) || options.port < 1 || options.port > 65535)
  ) {
    throw usageError('--port must be a TCP port number (1-65535)');
  }
  let policyFile: string;
  let policyNote: string;
  const temp = await mkdtemp(join(tmpdir(), 'reins-up-'));
  const started = Date.now();
  let nats: LocalNats | undefined;
  let services: Services | undefined;
  let client: ReinsClient | undefined;
  // One colour per process, in start order (a hash of the name may give two the same).
  const colours = new Map<string, number>();
  const log = (name: string, line: string, width: number) => {
    if (json) {
      // A service's JSON log line is a record here, not a string of JSON inside JSON.
      const record = parseLogRecord(line);
      printJson(record ? { type: 'log', name, record } : { type: 'log', name, line });
      return;
    }
    if (!colours.has(name)) colours.set(name, colours.size);
    const prefix = style.byIndex(colours.get(name) ?? 0, `[${name}]`.padEnd(width + 2));
    println(`${prefix} ${formatLogLine(line, style)}`);
  };
  let secure: SecureSetup | undefined;
  try {
    // Keys first: a directory that does not fit fails before anything is created or started.
    if (!insecure) {
      secure = await prepareSecureKeys(options.keys ?? projectKeyDir(), role, external);
      if (secure.generated && !json) {
        process.stderr.write(
          errStyle.dim(
            `generated secure-mode keys in ${secure.keys.dir}: seeds 0600 in a 0700 directory, ` +
              `git-ignored (its own .gitignore); reins commands in this project find them\n`,
          ),
        );
      }
    }
    if (options.policy) {
      policyFile = resolve(options.policy);
      try {
        await loadPolicyFile(policyFile);
      } catch (cause) {
        // The loader's message names the file already.
        const why = (cause as Error).message;
        throw new CliError(why.includes(policyFile) ? why : `policy ${policyFile}: ${why}`, {
          exitCode: ExitCode.usage,
          cause,
          hint: 'the policy format: docs/policy.md (examples/demo/policy.json is one)',
        });
      }
      policyNote = policyFile;
    } else {
      policyFile = join(temp, 'policy.json');
      await writeFile(policyFile, JSON.stringify(DEFAULT_POLICY, null, 2));
      policyNote =
        'built-in: read/list files, write *.md at the sandbox root, calculator, scratchpad';
    }
    let sandbox: string;
    if (options.sandbox) {
      sandbox = resolve(options.sandbox);
      if (!existsSync(sandbox) || !statSync(sandbox).isDirectory()) {
        throw usageError(
          `--sandbox ${sandbox} is not a directory`,
          'create it first, or omit --sandbox for a fresh temp dir',
        );
      }
    } else {
      sandbox = await mkdtemp(join(tmpdir(), 'reins-sandbox-'));
      await seedSandbox(sandbox);
    }
    const key = signingKey();
    // Insecure on purpose: the services need not repeat the warning printed above.
    const seedEnv = (r: 'supervisor' | 'planner' | 'executor'): Record<string, string> =>
      secure ? { REINS_NKEY_SEED_FILE: secure.keys.seedFiles[r] } : { REINS_INSECURE: '1' };

    let url: string;
    let natsNote: string;
    if (external) {
      url = natsUrl(options);
      natsNote = 'external (NATS_URL)';
    } else {
      const bin = findNatsServer();
      if (!bin)
        throw new CliError('nats-server not found', {
          exitCode: ExitCode.usage,
          hint: INSTALL_NATS_HINT,
        });
      if (!json) process.stderr.write(errStyle.dim(`starting nats-server (${bin})…\n`));
      // Every JetStream write flushed before it is acknowledged, where the server can do it.
      const version = natsServerVersion(bin);
      const sync = syncAlwaysConfig(version);
      const config = [secure?.keys.authConfig, sync].filter((c) => c !== undefined).join('\n');
      nats = await startLocalNats({
        bin,
        ...(options.port !== undefined ? { port: options.port } : {}),
        ...(config ? { config } : {}),
        onLog: (line) => log('nats', line, 4),
      });
      url = nats.url;
      natsNote =
        `nats-server ${version ?? ''} with JetStream${secure ? ' and nkey users' : ''}, ` +
        `temp store ${nats.storeDir} (stops with the swarm); ` +
        (sync
          ? 'every write synced to disk before it is acknowledged'
          : 'writes survive a server crash, not a machine crash (sync_interval needs nats-server ≥ 2.10)');
    }
    try {
      client = await openClient({
        nats: url,
        ...(secure ? { nkeyFile: secure.keys.seedFiles.client } : {}),
      });
    } catch (err) {
      const e = explainError(err, { natsUrl: url });
      if (external && e.code === 'NATS_UNREACHABLE') {
        // `reins up` is what is running: point at the NATS_URL it was given, not at itself.
        throw new CliError(e.message, {
          cause: err,
          code: e.code,
          hint: `start nats-server there (\`nats-server -js\`), or unset NATS_URL${
            options.nats ? ' and drop --nats' : ''
          } so that \`reins up\` starts its own`,
        });
      }
      throw e;
    }

    // With a shared NATS, a suffix keeps agent ids of two swarms apart.
    const tag = external ? `-${randomBytes(2).toString('hex')}` : '';
    const common = {
      NATS_URL: url,
      REINS_LOG_LEVEL: options.logLevel ?? process.env['REINS_LOG_LEVEL'] ?? 'info',
    };
    const specs: ServiceSpec[] = [
      {
        name: 'supervisor-1',
        service: 'supervisor',
        env: {
          ...common,
          ...key.env,
          ...seedEnv('supervisor'),
          REINS_POLICY_FILE: policyFile,
          REINS_AGENT_ID: `supervisor-1${tag}`,
        },
      },
      ...Array.from({ length: planners }, (_, i) => ({
        name: `${role}-${i + 1}`,
        service: 'planner' as const,
        env: {
          ...common,
          ...seedEnv('planner'),
          // Only this supervisor's signed heartbeats keep the planners' dead-man switch off.
          REINS_TRUSTED_ISSUERS: key.publicKey,
          REINS_ROLE: role,
          REINS_AGENT_ID: `${role}-${i + 1}${tag}`,
          // Offline runs still exercise USD budgets: price the scripted model like a small hosted one.
          REINS_SCRIPTED_PRICE: process.env['REINS_SCRIPTED_PRICE'] ?? '0.15,0.6',
          REINS_MAX_OUTPUT_TOKENS: process.env['REINS_MAX_OUTPUT_TOKENS'] ?? '1000',
        },
      })),
      ...Array.from({ length: executors }, (_, i) => ({
        name: `executor-${i + 1}`,
        service: 'executor' as const,
        env: {
          ...common,
          ...seedEnv('executor'),
          REINS_TRUSTED_ISSUERS: key.publicKey,
          REINS_SANDBOX_DIR: sandbox,
          REINS_AGENT_ID: `executor-${i + 1}${tag}`,
        },
      })),
    ];
    const width = Math.max(4, ...specs.map((s) => s.name.length));
    let rejectFailed: ((err: CliError) => void) | undefined;
    const failed = new Promise<never>((_, reject) => (rejectFailed = reject));
    failed.catch(() => undefined);
    let ready = false;
    let allGone: (() => void) | undefined;
    const gone = new Promise<void>((r) => (allGone = r));
    const hooks = {
      onLog: (name: string, line: string) => {
        log(name, line, width);
      },
      onExit: (name: string, code: number | null, sig: NodeJS.Signals | null) => {
        const how = sig ?? `code ${String(code)}`;
        if (!ready) {
          rejectFailed?.(
            new CliError(`${name} exited during start-up (${how})`, {
              exitCode: code === 2 ? ExitCode.usage : ExitCode.error,
              hint: 'its log lines above say why; `reins doctor` checks the setup',
            }),
          );
        } else if (json) printJson({ type: 'exit', name, code, signal: sig });
        else println(style.red(`[${name}] exited (${how})`));
        if (services && services.alive().length === 0) allGone?.();
      },
    };
    const idOf = (s: ServiceSpec) => s.env['REINS_AGENT_ID'] ?? s.name;
    const expected = new Set(specs.map(idOf));
    const aborted = new Promise<never>((_, reject) => {
      const onAbort = () =>
        reject(new CliError('interrupted during start-up', { exitCode: ExitCode.interrupted }));
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
    aborted.catch(() => undefined);
    const deadline = Date.now() + (options.readyTimeout ?? 30) * 1000;
    const onUp = (id: string) => {
      if (!json) process.stderr.write(errStyle.dim(`  ${id} is up\n`));
    };
    // Secure mode: only the supervisor may create the streams and buckets the others need.
    const waves = secure ? [specs.slice(0, 1), specs.slice(1)] : [specs];
    for (const wave of waves) {
      if (wave.length === 0) continue;
      if (services) services.add(wave);
      else services = startServices(wave, hooks);
      await waitForAgents(
        client,
        new Set(wave.map(idOf)),
        Math.max(0, deadline - Date.now()),
        Promise.race([failed, aborted]),
        onUp,
      );
    }
    ready = true;
    await client.close();
    client = undefined;

    const summary = {
      type: 'ready' as const,
      natsUrl: url,
      nats: nats ? { pid: nats.process.pid, storeDir: nats.storeDir } : 'external',
      agents: [...expected],
      sandbox,
      policy: policyNote,
      publicKey: key.publicKey,
      signingKey: key.source,
      ...(secure
        ? {
            secure: {
              keys: secure.keys.dir,
              clientSeedFile: secure.keys.seedFiles.client,
              generated: secure.generated,
            },
          }
        : {}),
      startedInMs: Date.now() - started,
    };
    if (json) printJson(summary);
    else printBanner(style, summary, natsNote);

    // Run until asked to stop, or until every service is gone.
    const stopRequested = new Promise<'signal'>((r) => {
      if (signal.aborted) r('signal');
      else signal.addEventListener('abort', () => r('signal'), { once: true });
    });
    const why = await Promise.race([stopRequested, gone.then(() => 'gone' as const)]);
    return why === 'signal' ? ExitCode.ok : ExitCode.error;
  } finally {
    // A configuration error before anything started has nothing to stop.
    const anything = nats !== undefined || services !== undefined || client !== undefined;
    if (!json && anything) process.stderr.write(errStyle.dim('\nstopping the swarm…\n'));
    // A second Ctrl-C while stopping kills at once.
    const hard = () => {
      services?.kill();
      nats?.process.kill('SIGKILL');
    };
    process.once('SIGINT', hard);
    process.once('SIGTERM', hard);
    await client?.close().catch(() => undefined);
    await services?.stop();
    await nats?.stop();
    await rm(temp, { recursive: true, force: true });
    process.removeListener('SIGINT', hard);
    process.removeListener('SIGTERM', hard);
    if (!json && anything)
      process.stderr.write(errStyle.dim(`stopped after ${formatDuration(Date.now() - started)}\n`));
  }
}

function printBanner(
  s: Style,
  info: {
    natsUrl: string;
    agents: string[];
    sandbox: string;
    policy: string;
    publicKey: string;
    signingKey: string;
    secure?: { keys: string; clientSeedFile: string; generated: boolean };
    startedInMs: number;
  },
  natsNote: string,
): void {
  println();
  println(`${s.green('✓')} ${s.bold('swarm ready')} in ${formatDuration(info.startedInMs)}`);
  println(`  ${s.bold('NATS_URL')}   ${info.natsUrl}  ${s.dim(natsNote)}`);
  println(`  ${s.bold('agents')}     ${info.agents.join('  ')}`);
  println(`  ${s.bold('sandbox')}    ${info.sandbox}  ${s.dim("(the executors' file tools)")}`);
  println(`  ${s.bold('policy')}     ${info.policy}`);
  println(
    `  ${s.bold('grants')}     signed by ${info.publicKey.slice(0, 12)}… ${s.dim(`(${info.signingKey})`)}`,
  );
  if (info.secure) {
    const note = info.secure.generated
      ? ` ${s.dim('(generated now; kept for the next start)')}`
      : '';
    println(`  ${s.bold('secure')}     one nkey user per role, keys in ${info.secure.keys}${note}`);
  } else {
    println(
      `  ${s.bold('insecure')}   ${s.yellow('no credentials: any connection may publish anything')}`,
    );
  }
  println();
  println(`  In another terminal:`);
  println(`    export NATS_URL=${info.natsUrl}`);
  if (info.secure) {
    println(
      `    export REINS_NKEY_SEED_FILE=${info.secure.clientSeedFile}   ${s.dim('# only outside this project: reins finds the keys here')}`,
    );
  }
  println(`    reins run "Read every document in docs/ and write a report to report.md" --follow`);
  println(`    reins ps`);
  println(s.dim('  Ctrl-C stops everything.'));
  println();
}
