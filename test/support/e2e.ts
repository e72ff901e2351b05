// A deployment for end-to-end tests: a real nats-server, a sandbox of documents, a supervisor
// signing key, a client, and service processes spawned from services/*/dist.
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  ReinsError,
  createGrantSigner,
  type GrantSigner,
  type RunRecord,
  type TraceEvent,
} from '@reins/protocol';
import {
  startNatsServer,
  startSwarm,
  type NatsCluster,
  type NatsServer,
  type ServiceSpec,
  type Swarm,
} from '@reins/testing';
import {
  connect,
  createLogger,
  type ReinsClient,
  type RunHandle,
  type TraceSubscription,
} from './packages.js';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

/** The demo's policy: read and list anything, write only `*.md` at the sandbox root. */
export const POLICY = {
  version: 1,
  rules: [
    { id: 'files.read', match: { tool: 'read_file' }, effect: 'allow' },
    { id: 'files.list', match: { tool: 'list_files' }, effect: 'allow' },
    {
      id: 'files.write.reports',
      match: { tool: 'write_file' },
      effect: 'allow',
      args: [{ path: 'path', pattern: '[A-Za-z0-9_-]+\\.md' }],
    },
    { id: 'math', match: { tool: 'calculator' }, effect: 'allow' },
    { id: 'scratch', match: { tool: 'scratch_*' }, effect: 'allow' },
  ],
} as const;

/** Documents the research script summarises (heading of each is asserted in the report). */
export const DOCS: Readonly<Record<string, string>> = {
  'alpha.md': '# Alpha Overview\n\nAlpha is the first document. It has a few words.\n',
  'beta.md': '# Beta Notes\n\nBeta comes second.\n\n## Beta Details\n\nMore about beta.\n',
  'gamma.txt': '# Gamma Appendix\n\nGamma closes the set. The end.\n',
};

/** Polls `probe` until it returns a value that is not `undefined`/`false`, or throws at the deadline. */
export async function waitFor<T>(
  probe: () => T | undefined | false | Promise<T | undefined | false>,
  what: string,
  options: { timeoutMs?: number; intervalMs?: number; diagnostics?: () => string } = {},
): Promise<T> {
  const deadline = Date.now() + (options.timeoutMs ?? 20_000);
  let lastError: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const last = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new Error(`timed out waiting for ${what}${last}\n${options.diagnostics?.() ?? ''}`);
    }
    await new Promise((r) => setTimeout(r, options.intervalMs ?? 50));
  }
}

/** Trace events of one run, collected from the start of the stream, in stream order. */
export interface RunTrace extends AsyncDisposable {
  readonly events: TraceEvent[];
  /** Resolves with the first event matching `match` (already seen or yet to come). */
  waitFor(match: (e: TraceEvent) => boolean, what: string, timeoutMs?: number): Promise<TraceEvent>;
  stop(): Promise<void>;
}

/** A test deployment. Dispose it to stop every process, the client and the server. */
export interface E2E extends AsyncDisposable {
  /** The deployment's nats-server (throws on a deployment started on a `cluster`). */
  readonly nats: NatsServer;
  /** The cluster the deployment runs on, when started with `cluster`. */
  readonly cluster: NatsCluster | undefined;
  /** What the services get as `NATS_URL`. */
  readonly natsUrl: string;
  /** Sandbox root of the executors' file tools; documents are in `docs/`. */
  readonly sandbox: string;
  /** Seed and signer of the supervisor's grant key (executors trust its public key). */
  readonly seed: string;
  readonly signer: GrantSigner;
  readonly client: ReinsClient;
  readonly swarm: Swarm;
  /** Spawns a service process with the deployment's common env plus `env`. */
  start(
    name: string,
    service: 'supervisor' | 'planner' | 'executor',
    env?: Record<string, string>,
  ): void;
  startSupervisor(name: string, env?: Record<string, string>): void;
  startExecutor(name: string, env?: Record<string, string>): void;
  startPlanner(name: string, env?: Record<string, string>): void;
  /** Waits until `count` agents heartbeat as running (optionally of one role). */
  waitForAgents(count: number, role?: string): Promise<void>;
  /** Collects a run's trace events. */
  trace(runId: string): Promise<RunTrace>;
  /**
   * Waits for the run to end and returns its record; rides out a supervisor that is briefly
   * unreachable (restarts), and says what every process logged when the run does not end.
   */
  result(run: RunHandle, timeoutMs?: number): Promise<RunRecord>;
  /** Recent logs of every process, for failure messages. */
  diagnostics(): string;
}

/** Starts nats-server, writes the sandbox and policy, connects a client; no processes yet. */
export async function startE2E(
  options: {
    docs?: Readonly<Record<string, string>>;
    /** nats-server configuration text (e.g. JetStream `sync_interval`), for the server started here. */
    natsConfig?: string;
    /** Run on this cluster instead of a nats-server of its own (disposed with the deployment). */
    cluster?: NatsCluster;
    /** Environment every service gets (on top of the common env, below each service's own). */
    env?: Record<string, string>;
  } = {},
): Promise<E2E> {
  const cluster = options.cluster;
  const ownServer = cluster
    ? undefined
    : await startNatsServer(options.natsConfig !== undefined ? { config: options.natsConfig } : {});
  const natsUrl = cluster ? cluster.url : (ownServer?.url ?? '');
  const dir = await mkdtemp(join(tmpdir(), 'reins-e2e-'));
  const sandbox = join(dir, 'sandbox');
  await mkdir(join(sandbox, 'docs'), { recursive: true });
  for (const [name, text] of Object.entries(options.docs ?? DOCS)) {
    const path = join(sandbox, 'docs', name);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, text);
  }
  const policyFile = join(dir, 'policy.json');
  await writeFile(policyFile, JSON.stringify(POLICY));
  const { seed, signer } = createGrantSigner();
  const exits: string[] = [];
  const swarm = startSwarm([], {
    servicesDir: join(repoRoot, 'services'),
    onExit: (name, code, signal) => exits.push(`${name} exited (${String(code ?? signal)})`),
  });
  const client = await connect({
    servers: cluster ? cluster.urls : natsUrl,
    identity: 'e2e',
    // A request of the test's own client that times out names its caller in the stack (the
    // runtime turns async traces off for speed; K9 was hard to attribute without them).
    connection: { noAsyncTraces: false },
    logger: createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' }),
  });
  const common = { NATS_URL: natsUrl, REINS_SHUTDOWN_DEADLINE_MS: '3000', ...options.env };
  const traces = new Set<RunTrace>();

  const diagnostics = () =>
    [
      ...exits,
      ...[...swarm.processes.keys()].map(
        (name) => `── ${name}\n${swarm.logs(name).slice(-25).join('\n')}`,
      ),
    ].join('\n');

  const e2e: E2E = {
    get nats(): NatsServer {
      if (!ownServer) throw new Error('this deployment runs on a cluster: use e2e.cluster');
      return ownServer;
    },
    cluster,
    natsUrl,
    sandbox,
    seed,
    signer,
    client,
    swarm,
    start(name, service, env = {}) {
      const spec: ServiceSpec = { name, service, env: { ...common, ...env } };
      swarm.start(spec);
    },
    startSupervisor(name, env = {}) {
      e2e.start(name, 'supervisor', {
        REINS_SUPERVISOR_SEED: seed,
        REINS_POLICY_FILE: policyFile,
        REINS_AGENT_ID: name,
        ...env,
      });
    },
    startExecutor(name, env = {}) {
      e2e.start(name, 'executor', {
        REINS_TRUSTED_ISSUERS: signer.publicKey,
        REINS_SANDBOX_DIR: sandbox,
        REINS_AGENT_ID: name,
        ...env,
      });
    },
    startPlanner(name, env = {}) {
      e2e.start(name, 'planner', {
        REINS_TRUSTED_ISSUERS: signer.publicKey,
        REINS_ROLE: 'researcher',
        REINS_SCRIPT: 'research',
        REINS_TOOLS: 'files,calculator,scratchpad',
        REINS_AGENT_ID: name,
        ...env,
      });
    },
    async waitForAgents(count, role) {
      await waitFor(
        async () =>
          (await client.agents.list()).filter(
            (a) => a.status === 'running' && (role === undefined || a.role === role),
          ).length >= count,
        `${count} running agents${role ? ` of role ${role}` : ''}`,
        { timeoutMs: 30_000, intervalMs: 100, diagnostics },
      );
    },
    async trace(runId) {
      const events: TraceEvent[] = [];
      const waiters = new Set<() => void>();
      const sub: TraceSubscription = await client.traces.subscribe(
        { runId },
        {
          from: 'start',
          callback: (e) => {
            events.push(e);
            for (const w of waiters) w();
          },
        },
      );
      const t: RunTrace = {
        events,
        waitFor(match, what, timeoutMs = 30_000) {
          return new Promise((resolve, reject) => {
            const check = () => {
              const found = events.find(match);
              if (!found) return;
              cleanup();
              resolve(found);
            };
            const timer = setTimeout(() => {
              cleanup();
              reject(
                new Error(
                  `timed out waiting for trace ${what}; saw ${events.map((e) => `${e.role}:${e.event}:${e.stepId ?? ''}`).join(' ')}\n${diagnostics()}`,
                ),
              );
            }, timeoutMs);
            const cleanup = () => {
              clearTimeout(timer);
              waiters.delete(check);
            };
            waiters.add(check);
            check();
          });
        },
        async stop() {
          traces.delete(t);
          await sub.stop();
        },
        [Symbol.asyncDispose]: () => t.stop(),
      };
      traces.add(t);
      return t;
    },
    async result(run, timeoutMs = 40_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        try {
          return await run.result({ timeoutMs: Math.max(1, deadline - Date.now()) });
        } catch (err) {
          const unavailable = err instanceof ReinsError && err.code === 'UNAVAILABLE';
          if (!unavailable || Date.now() > deadline) {
            throw new Error(`run ${run.id} did not end: ${String(err)}\n${diagnostics()}`, {
              cause: err,
            });
          }
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    },
    diagnostics,
    async [Symbol.asyncDispose]() {
      for (const t of [...traces]) await t.stop();
      await swarm.stop();
      await client.close();
      await (cluster ?? ownServer)?.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
  return e2e;
}
