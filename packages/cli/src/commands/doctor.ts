import type { ReinsClient } from '@reins/client';
import { loadSigningKey } from '@reins/supervisor';
import { connectClient, loadCredentials, natsUrl, type CommonOptions } from '../connection.js';
import { CliError, ExitCode, explainError } from '../errors.js';
import { jetStreamProblem } from '../jetstream.js';
import { INSTALL_NATS_HINT, findNatsServer, natsServerVersion } from '../nats-server.js';
import { createStyle, printJson, println } from '../output.js';
import { serviceMain } from '../swarm.js';

/** How one check went: `ok`, `warn` (works, but not as intended), `fail`. */
export type CheckStatus = 'ok' | 'warn' | 'fail';

/** One line of `reins doctor`. */
export interface Check {
  name: string;
  status: CheckStatus;
  detail: string;
  /** What to do about it (absent when ok). */
  fix?: string;
}

const MIN_NODE = [22, 12] as const;

function nodeCheck(): Check {
  const [major = 0, minor = 0] = process.versions.node.split('.').map(Number);
  const ok = major > MIN_NODE[0] || (major === MIN_NODE[0] && minor >= MIN_NODE[1]);
  return {
    name: 'node',
    status: ok ? 'ok' : 'fail',
    detail: `Node ${process.versions.node} (needs ≥ ${MIN_NODE.join('.')})`,
    ...(ok
      ? {}
      : { fix: 'install Node 22.12 or newer (e.g. `nvm install 24`), or run `./dev setup`' }),
  };
}

function natsServerCheck(): Check {
  let bin: string | undefined;
  try {
    bin = findNatsServer();
  } catch (err) {
    return {
      name: 'nats-server',
      status: 'fail',
      detail: (err as Error).message,
      fix: INSTALL_NATS_HINT,
    };
  }
  if (!bin)
    return {
      name: 'nats-server',
      status: 'fail',
      detail: 'nats-server not found on PATH, /usr/sbin or NATS_SERVER_BIN',
      fix: INSTALL_NATS_HINT,
    };
  const version = natsServerVersion(bin);
  if (!version)
    return {
      name: 'nats-server',
      status: 'fail',
      detail: `${bin} does not run`,
      fix: INSTALL_NATS_HINT,
    };
  return { name: 'nats-server', status: 'ok', detail: `nats-server ${version} at ${bin}` };
}

function servicesCheck(): Check {
  try {
    for (const s of ['supervisor', 'planner', 'executor'] as const) serviceMain(s);
    return {
      name: 'services',
      status: 'ok',
      detail: 'supervisor, planner and executor services are built',
    };
  } catch (err) {
    return {
      name: 'services',
      status: 'warn',
      detail: err instanceof CliError ? err.message : String(err),
      fix: '`pnpm run build` (needed by `reins up`)',
    };
  }
}

function signingKeyCheck(): Check {
  const env = process.env;
  if (!env['REINS_SUPERVISOR_SEED'] && !env['REINS_SUPERVISOR_SEED_FILE']) {
    return {
      name: 'signing key',
      status: 'warn',
      detail:
        'REINS_SUPERVISOR_SEED(_FILE) not set: a supervisor started here signs grants with a throw-away dev key (`reins up` generates one per swarm)',
      fix: 'create one with `reins keygen`, store the seed with chmod 600, set REINS_SUPERVISOR_SEED_FILE=<path> and give executors REINS_TRUSTED_ISSUERS=<public key>',
    };
  }
  try {
    const { signer, source } = loadSigningKey({ allowDevKey: false });
    return {
      name: 'signing key',
      status: 'ok',
      detail: `${source === 'envFile' ? 'REINS_SUPERVISOR_SEED_FILE' : 'REINS_SUPERVISOR_SEED'} → public key ${signer.publicKey}`,
    };
  } catch (err) {
    return {
      name: 'signing key',
      status: 'fail',
      detail: (err as Error).message,
      fix: 'set REINS_SUPERVISOR_SEED(_FILE) to an nkey account seed (S…); `reins keygen` makes one',
    };
  }
}

async function jetStreamCheck(client: ReinsClient): Promise<Check> {
  const problem = await jetStreamProblem(client);
  if (problem === undefined)
    return { name: 'jetstream', status: 'ok', detail: 'JetStream enabled' };
  return {
    name: 'jetstream',
    status: 'fail',
    detail: `JetStream not available: ${problem}`,
    fix: 'restart nats-server with JetStream: `nats-server -js` (or let `reins up` start one)',
  };
}

async function supervisorCheck(client: ReinsClient): Promise<Check> {
  const subject = client.runtime.subjects.runsList;
  try {
    await client.runs.list({ limit: 1 });
    return { name: 'supervisor', status: 'ok', detail: `a supervisor answers on ${subject}` };
  } catch (err) {
    return {
      name: 'supervisor',
      status: 'fail',
      detail: `no supervisor answered on ${subject} (${(err as Error).message})`,
      fix: 'start one with `reins up` (a local swarm) or `node services/supervisor/dist/main.js`',
    };
  }
}

async function agentsCheck(client: ReinsClient): Promise<Check> {
  try {
    const agents = (await client.agents.list()).filter((a) => a.status !== 'lost');
    const byRole = new Map<string, number>();
    for (const a of agents) byRole.set(a.role, (byRole.get(a.role) ?? 0) + 1);
    const roles = [...byRole].map(([r, n]) => `${r} ×${n}`).join(', ');
    const hasWorkers = agents.some((a) => a.role !== 'supervisor');
    return {
      name: 'agents',
      status: hasWorkers ? 'ok' : 'warn',
      detail: agents.length ? `${agents.length} live agent(s): ${roles}` : 'no live agents',
      ...(hasWorkers
        ? {}
        : {
            fix: 'start planners and executors: `reins up` (with NATS_URL set it starts only the services)',
          }),
    };
  } catch (err) {
    return {
      name: 'agents',
      status: 'warn',
      detail: `cannot list agents: ${(err as Error).message}`,
      fix: 'check JetStream (KV reins_agents)',
    };
  }
}

/** Runs every check; NATS-dependent ones are skipped (failed) when NATS is unreachable. */
export async function runChecks(options: CommonOptions): Promise<Check[]> {
  const url = natsUrl(options);
  const checks: Check[] = [nodeCheck(), natsServerCheck(), servicesCheck()];
  let client: ReinsClient | undefined;
  try {
    const credentials = await loadCredentials(options);
    client = await connectClient(options, credentials);
    checks.push({
      name: 'nats',
      status: 'ok',
      detail: `NATS reachable at ${url}${credentials ? ` with the nkey of ${credentials.source}` : ''}`,
    });
  } catch (err) {
    const explained = explainError(err, { natsUrl: url });
    // Refused or unusable credentials: the server is there, the seed is the problem.
    const credentialsProblem =
      explained.code === 'NATS_AUTH' || explained.code === 'BAD_CREDENTIALS';
    checks.push({
      name: 'nats',
      status: 'fail',
      detail: credentialsProblem ? explained.message : `cannot connect to NATS at ${url}`,
      fix:
        credentialsProblem && explained.hint
          ? explained.hint
          : 'start a local swarm with `reins up`, run `nats-server -js`, or set NATS_URL / --nats to a running server',
    });
  }
  // With NATS reachable elsewhere, a missing local nats-server binary does not matter.
  const local = checks.find((c) => c.name === 'nats-server');
  if (client && local?.status === 'fail') local.status = 'warn';
  if (client) {
    try {
      const js = await jetStreamCheck(client);
      checks.push(js);
      if (js.status === 'ok') {
        checks.push(await supervisorCheck(client));
        checks.push(await agentsCheck(client));
      }
    } finally {
      await client.close();
    }
  }
  checks.push(signingKeyCheck());
  return checks;
}

/**
 * `reins doctor`: Node version, nats-server, services built, NATS reachable, JetStream, a
 * supervisor answering, live agents, signing key — one ✓ / ! / ✗ line each with the fix.
 * Exit 1 when any check failed (warnings do not fail). JSON: `{ ok, checks }`.
 */
export async function doctorCommand(options: CommonOptions): Promise<ExitCode> {
  const checks = await runChecks(options);
  const ok = checks.every((c) => c.status !== 'fail');
  if (options.json) {
    printJson({ ok, checks });
    return ok ? ExitCode.ok : ExitCode.error;
  }
  const s = createStyle();
  const mark = { ok: s.green('✓'), warn: s.yellow('!'), fail: s.red('✗') } as const;
  for (const c of checks) {
    println(`${mark[c.status]} ${s.bold(c.name.padEnd(12))} ${c.detail}`);
    if (c.fix && c.status !== 'ok') println(`  ${' '.repeat(12)} ${s.dim('fix:')} ${c.fix}`);
  }
  println();
  println(
    ok ? s.green('all required checks passed') : s.red('some checks failed — see the fixes above'),
  );
  return ok ? ExitCode.ok : ExitCode.error;
}
