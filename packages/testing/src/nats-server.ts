import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';

/** Options of `startNatsServer`. */
export interface NatsServerOptions {
  /** Enable JetStream (default true). */
  jetstream?: boolean;
  /** Extra nats-server configuration text (appended to the generated config file). */
  config?: string;
  /** Port to listen on (default: a random free port). */
  port?: number;
  /** Store directory (default: a new temp dir, removed on stop). */
  storeDir?: string;
  /** How long to wait for readiness (default 20 s). */
  readyTimeoutMs?: number;
  /** Extra command-line arguments. */
  args?: string[];
  /**
   * Opt-in HTTP monitoring endpoint (`/varz`, `/jsz`, …) on a random free port of 127.0.0.1,
   * exposed as `monitorUrl` (default false).
   */
  monitoring?: boolean;
}

/** A running nats-server owned by a test. Dispose it (`await using`) to remove it and its data. */
export interface NatsServer extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  readonly storeDir: string;
  /** Base URL of the HTTP monitoring endpoint (`http://127.0.0.1:<port>`), when `monitoring`. */
  readonly monitorUrl: string | undefined;
  /** The running process id, or undefined while it is down. */
  readonly pid: number | undefined;
  /** Stops the process (SIGTERM, then SIGKILL) and removes the temp store. */
  stop(): Promise<void>;
  /** Stops gracefully and starts again on the same port and store: JetStream data survives. */
  restart(): Promise<void>;
  /** SIGKILLs the process and leaves the store (crash). `restart()` brings it back. */
  kill(): Promise<void>;
}

const running = new Set<ChildProcess>();
let exitHookInstalled = false;
function trackChild(child: ChildProcess): void {
  running.add(child);
  child.once('exit', () => running.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // A test process that dies must not leave nats-servers behind.
    process.once('exit', () => {
      for (const c of running) c.kill('SIGKILL');
    });
  }
}

/**
 * Path of the nats-server binary: `NATS_SERVER_BIN`, else `nats-server` on PATH. Throws an
 * error that says how to install it when there is none.
 */
export function findNatsServer(): string {
  const fromEnv = process.env['NATS_SERVER_BIN'];
  if (fromEnv) {
    if (!existsSync(fromEnv)) throw new Error(`NATS_SERVER_BIN=${fromEnv} does not exist`);
    return fromEnv;
  }
  // Debian installs nats-server into /usr/sbin, which a plain user PATH may lack.
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = join(dir, 'nats-server');
    if (existsSync(candidate)) return candidate;
  }
  throw new Error(
    'nats-server not found on PATH. Install it (Debian: `sudo apt-get install -y nats-server`, ' +
      'or a release from https://github.com/nats-io/nats-server/releases) or set NATS_SERVER_BIN ' +
      'to its path. The README setup commands install it for you.',
  );
}

/** The version string of the nats-server binary, e.g. `2.9.10`. */
export function natsServerVersion(bin = findNatsServer()): string {
  const out = spawnSync(bin, ['--version'], { encoding: 'utf8' });
  return /v?(\d+\.\d+\.\d+)/.exec(out.stdout)?.[1] ?? 'unknown';
}

/** A free TCP port on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => {
        if (addr && typeof addr === 'object') resolve(addr.port);
        else reject(new Error('no port'));
      });
    });
  });
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : 'no answer';
}

/** Resolves once a client can connect (and, with JetStream, reach the JetStream API). */
export async function waitForNats(
  url: string,
  jetstream: boolean,
  timeoutMs: number,
  isAlive: () => boolean,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    if (!isAlive())
      throw new Error(`nats-server exited before it was ready: ${describe(lastError)}`);
    try {
      const nc = await connect({ servers: url, reconnect: false, timeout: 1000 });
      try {
        if (jetstream) {
          const jsm = await jetstreamManager(nc, { timeout: 1000 });
          await jsm.getAccountInfo();
        }
        return;
      } finally {
        await nc.close();
      }
    } catch (err) {
      lastError = err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`nats-server at ${url} not ready after ${timeoutMs} ms: ${describe(lastError)}`);
}

/** Waits for a child process to exit, SIGKILLing it after `graceMs`. */
async function terminate(
  child: ChildProcess,
  signal: NodeJS.Signals,
  graceMs: number,
): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

interface ProcessSpec {
  bin: string;
  args: string[];
  url: string;
  jetstream: boolean;
  readyTimeoutMs: number;
}

/** Launches a nats-server process and waits for it to be ready. */
export async function launch(spec: ProcessSpec): Promise<ChildProcess> {
  const child = spawn(spec.bin, spec.args, { stdio: ['ignore', 'ignore', 'pipe'] });
  trackChild(child);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
  spawnError.catch(() => undefined);
  try {
    await Promise.race([
      waitForNats(
        spec.url,
        spec.jetstream,
        spec.readyTimeoutMs,
        () => child.exitCode === null && child.signalCode === null,
      ),
      spawnError,
    ]);
  } catch (err) {
    child.kill('SIGKILL');
    throw new Error(`nats-server failed to start: ${(err as Error).message}\n${stderr}`, {
      cause: err,
    });
  }
  return child;
}

/**
 * Starts a real nats-server on a random free port with JetStream and a temp store dir, and
 * resolves once a client can use it. Throws a clear error when nats-server is not installed.
 *
 * ```ts
 * await using nats = await startNatsServer();
 * const nc = await connect({ servers: nats.url });
 * ```
 */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServer> {
  const bin = findNatsServer();
  const jetstream = options.jetstream ?? true;
  const ownsStore = options.storeDir === undefined;
  const storeDir = options.storeDir ?? (await mkdtemp(join(tmpdir(), 'reins-nats-')));
  const extra: string[] = [];
  if (jetstream) extra.push('-js', '-sd', storeDir);
  if (options.config) {
    const file = join(storeDir, 'extra.conf');
    await writeFile(file, options.config);
    extra.push('-c', file);
  }
  extra.push(...(options.args ?? []));
  let monitorPort = options.monitoring ? await freePort() : undefined;
  const specOn = (port: number) => ({
    bin,
    args: [
      '-a',
      '127.0.0.1',
      '-p',
      String(port),
      ...(monitorPort === undefined ? [] : ['-m', String(monitorPort)]),
      ...extra,
    ],
    url: `nats://127.0.0.1:${port}`,
    jetstream,
    readyTimeoutMs: options.readyTimeoutMs ?? 20_000,
  });

  let port = options.port ?? (await freePort());
  let spec = specOn(port);
  let child: ChildProcess | undefined;
  // A free port is only free until someone else binds it (other tests on the machine): a random
  // port taken meanwhile is replaced by another one.
  for (let attempt = 1; !child; attempt++) {
    try {
      child = await launch(spec);
    } catch (err) {
      const taken = /address already in use/i.test(String(err));
      if (options.port !== undefined || !taken || attempt >= 3) {
        if (ownsStore) await rm(storeDir, { recursive: true, force: true });
        throw err;
      }
      port = await freePort();
      if (monitorPort !== undefined) monitorPort = await freePort();
      spec = specOn(port);
    }
  }
  const url = spec.url;
  let stopped = false;

  const server: NatsServer = {
    url,
    port,
    storeDir,
    monitorUrl: monitorPort === undefined ? undefined : `http://127.0.0.1:${monitorPort}`,
    get pid() {
      return child && child.exitCode === null && child.signalCode === null ? child.pid : undefined;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (child) await terminate(child, 'SIGTERM', 5_000);
      child = undefined;
      if (ownsStore) await rm(storeDir, { recursive: true, force: true });
    },
    async restart() {
      if (stopped) throw new Error('nats-server was stopped; start a new one');
      if (child) await terminate(child, 'SIGTERM', 5_000);
      child = await launch(spec);
    },
    async kill() {
      if (child) await terminate(child, 'SIGKILL', 5_000);
    },
    [Symbol.asyncDispose]() {
      return server.stop();
    },
  };
  return server;
}
