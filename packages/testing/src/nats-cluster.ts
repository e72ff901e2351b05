import type { ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findNatsServer, freePort, launch } from './nats-server.js';

/** Options of `startNatsCluster`. */
export interface NatsClusterOptions {
  /** Number of servers (default 3; JetStream needs 3 for replicated streams to survive one loss). */
  size?: number;
  readyTimeoutMs?: number;
}

/** One member of a test cluster. */
export interface ClusterNode {
  readonly name: string;
  readonly url: string;
  readonly port: number;
  readonly pid: number | undefined;
}

/** A running nats-server cluster with JetStream; dispose it to remove every process and store. */
export interface NatsCluster extends AsyncDisposable {
  /** All client URLs, comma-separated (what `servers` accepts). */
  readonly url: string;
  readonly urls: string[];
  readonly nodes: ClusterNode[];
  readonly storeDir: string;
  stop(): Promise<void>;
  /** SIGKILLs one node (by index). */
  kill(index: number): Promise<void>;
  /** Restarts one node (by index) with its store. */
  restart(index: number): Promise<void>;
}

interface NodeSpec {
  name: string;
  port: number;
  url: string;
  spec: Parameters<typeof launch>[0];
}

/** Configuration files and launch specs of `size` nodes on new random ports. */
async function nodeSpecs(
  bin: string,
  storeDir: string,
  size: number,
  readyTimeoutMs: number,
): Promise<NodeSpec[]> {
  const ports = await Promise.all(Array.from({ length: size }, () => freePort()));
  const routePorts = await Promise.all(Array.from({ length: size }, () => freePort()));
  const routes = routePorts.map((p) => `nats-route://127.0.0.1:${p}`);
  return Promise.all(
    ports.map(async (port, i) => {
      const name = `n${i + 1}`;
      const dir = join(storeDir, name);
      await mkdir(dir, { recursive: true });
      const conf = join(dir, 'server.conf');
      await writeFile(
        conf,
        [
          `server_name: ${name}`,
          `listen: 127.0.0.1:${port}`,
          `jetstream { store_dir: "${dir}" }`,
          `cluster { name: reins-test, listen: 127.0.0.1:${routePorts[i]}, routes: [${routes.join(', ')}] }`,
        ].join('\n'),
      );
      const url = `nats://127.0.0.1:${port}`;
      return {
        name,
        port,
        url,
        spec: { bin, args: ['-c', conf], url, jetstream: true, readyTimeoutMs },
      };
    }),
  );
}

/**
 * Starts a JetStream cluster of `size` nats-servers on random ports, resolving once every node
 * answers JetStream API calls (the meta leader is elected).
 */
export async function startNatsCluster(options: NatsClusterOptions = {}): Promise<NatsCluster> {
  const size = options.size ?? 3;
  const bin = findNatsServer();
  const storeDir = await mkdtemp(join(tmpdir(), 'reins-cluster-'));
  let specs: NodeSpec[] = [];
  const children: (ChildProcess | undefined)[] = [];
  // A free port is only free until someone else binds it (other tests on the machine): when a
  // node cannot listen, start the whole cluster again on new ports (routes name every port).
  for (let attempt = 1; ; attempt++) {
    specs = await nodeSpecs(bin, storeDir, size, options.readyTimeoutMs ?? 30_000);
    const launched = await Promise.allSettled(specs.map((s) => launch(s.spec)));
    const failed = launched.find((r) => r.status === 'rejected');
    if (!failed) {
      for (const r of launched) if (r.status === 'fulfilled') children.push(r.value);
      break;
    }
    await Promise.all(
      launched.map(async (r) => {
        const c = r.status === 'fulfilled' ? r.value : undefined;
        if (!c || c.exitCode !== null || c.signalCode !== null) return;
        const exited = new Promise<void>((done) => c.once('exit', () => done()));
        c.kill('SIGKILL');
        await exited;
      }),
    );
    // The next attempt starts from empty stores (these nodes may have formed a cluster).
    await rm(storeDir, { recursive: true, force: true });
    const reason: unknown = failed.reason;
    if (attempt >= 3 || !/address already in use/i.test(String(reason))) throw reason;
    await mkdir(storeDir, { recursive: true });
  }
  const nodes: ClusterNode[] = specs.map((s, i) => ({
    name: s.name,
    url: s.url,
    port: s.port,
    get pid() {
      const c = children[i];
      return c && c.exitCode === null && c.signalCode === null ? c.pid : undefined;
    },
  }));
  const end = async (i: number, signal: NodeJS.Signals) => {
    const c = children[i];
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill(signal);
    const t = setTimeout(() => c.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  };
  let stopped = false;
  const cluster: NatsCluster = {
    url: specs.map((s) => s.url).join(','),
    urls: specs.map((s) => s.url),
    nodes,
    storeDir,
    async stop() {
      if (stopped) return;
      stopped = true;
      await Promise.all(children.map((_, i) => end(i, 'SIGTERM')));
      await rm(storeDir, { recursive: true, force: true });
    },
    async kill(i) {
      await end(i, 'SIGKILL');
    },
    async restart(i) {
      const s = specs[i];
      if (!s) throw new RangeError(`no node ${i}`);
      await end(i, 'SIGTERM');
      children[i] = await launch(s.spec);
    },
    [Symbol.asyncDispose]() {
      return cluster.stop();
    },
  };
  return cluster;
}
