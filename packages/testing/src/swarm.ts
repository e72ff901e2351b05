import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** One service process of a swarm. */
export interface ServiceSpec {
  /** Unique name of the process in the swarm (used in logs and `kill`). */
  name: string;
  /** Directory name under `servicesDir`: its `dist/main.js` is run (`supervisor`, `planner`, …). */
  service: string;
  /** Environment on top of the parent's (and `REINS_LOG_LEVEL=warn` unless set). */
  env: Record<string, string>;
}

/** Options of `startSwarm`. */
export interface SwarmOptions {
  /**
   * Absolute directory holding the services (`<servicesDir>/<service>/dist/main.js`). Default: the
   * `services` directory of the repository this package sits in.
   */
  servicesDir?: string;
  /** Receives each log line of each process (stdout and stderr). */
  onLog?: (name: string, line: string) => void;
  /** Called when a process exits that was not stopped through the swarm. */
  onExit?: (name: string, code: number | null, signal: NodeJS.Signals | null) => void;
  /** Log lines kept per process for `logs()` (default 200). */
  keepLines?: number;
}

/** A running swarm of service processes. Dispose it (`await using`) to stop every process. */
export interface Swarm extends AsyncDisposable {
  /** The current process of each name (a restarted name maps to its new process). */
  readonly processes: ReadonlyMap<string, ChildProcess>;
  /** Spawns one more process (or a new one under a name whose process has exited). */
  start(spec: ServiceSpec): ChildProcess;
  /**
   * Sends `signal` (default `SIGKILL`) to the named process and resolves once it has exited.
   * Throws when there is no process of that name.
   */
  kill(name: string, signal?: NodeJS.Signals): Promise<void>;
  /** The last log lines of the named process (empty for an unknown name). */
  logs(name: string): readonly string[];
  /** SIGTERMs every process and waits for them to exit (SIGKILL after 15 s). */
  stop(): Promise<void>;
}

/** `<repo>/services`, from `<repo>/packages/testing/dist/swarm.js`. */
const defaultServicesDir = () => fileURLToPath(new URL('../../../services/', import.meta.url));

const alive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;

function exited(c: ChildProcess): Promise<void> {
  if (!alive(c)) return Promise.resolve();
  return new Promise((resolve) => c.once('exit', () => resolve()));
}

const owned = new Set<ChildProcess>();
let exitHookInstalled = false;
function track(child: ChildProcess): void {
  owned.add(child);
  child.once('exit', () => owned.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // A test process that dies must not leave service processes behind.
    process.once('exit', () => {
      for (const c of owned) c.kill('SIGKILL');
    });
  }
}

/**
 * Spawns each service as its own Node process running `<servicesDir>/<service>/dist/main.js`
 * (build them first). Logs go to `onLog`, one line at a time; a process that exits without being
 * stopped is reported through `onExit`. Throws when a service's entry point does not exist.
 */
export function startSwarm(specs: readonly ServiceSpec[], options: SwarmOptions = {}): Swarm {
  const servicesDir = options.servicesDir ?? defaultServicesDir();
  const keepLines = options.keepLines ?? 200;
  const processes = new Map<string, ChildProcess>();
  const logs = new Map<string, string[]>();
  const expected = new WeakSet<ChildProcess>();
  let stopping = false;

  const start = (spec: ServiceSpec): ChildProcess => {
    const previous = processes.get(spec.name);
    if (previous && alive(previous)) throw new Error(`process ${spec.name} is still running`);
    const main = join(servicesDir, spec.service, 'dist', 'main.js');
    if (!existsSync(main)) {
      throw new Error(`service ${spec.service} is not built: ${main} does not exist (run tsc -b)`);
    }
    const child = spawn(process.execPath, [main], {
      env: {
        ...process.env,
        REINS_LOG_LEVEL: process.env['REINS_LOG_LEVEL'] ?? 'warn',
        ...spec.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    track(child);
    processes.set(spec.name, child);
    const kept = logs.get(spec.name) ?? [];
    logs.set(spec.name, kept);
    const onData = (() => {
      let buffer = '';
      return (d: Buffer) => {
        buffer += d.toString();
        const lines = buffer.split('\n');
        buffer = lines.pop() ?? '';
        for (const line of lines) {
          if (!line.trim()) continue;
          kept.push(line);
          if (kept.length > keepLines) kept.shift();
          options.onLog?.(spec.name, line);
        }
      };
    })();
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code, signal) => {
      if (!stopping && !expected.has(child)) options.onExit?.(spec.name, code, signal);
    });
    return child;
  };

  for (const spec of specs) start(spec);

  const stop = async () => {
    stopping = true;
    await Promise.all(
      [...processes.values()].map(async (c) => {
        if (!alive(c)) return;
        const t = setTimeout(() => c.kill('SIGKILL'), 15_000);
        const done = exited(c);
        c.kill('SIGTERM');
        await done;
        clearTimeout(t);
      }),
    );
  };

  return {
    processes,
    start,
    async kill(name, signal = 'SIGKILL') {
      const c = processes.get(name);
      if (!c) throw new Error(`no process named ${name}`);
      expected.add(c);
      const done = exited(c);
      if (alive(c)) c.kill(signal);
      await done;
    },
    logs: (name) => [...(logs.get(name) ?? [])],
    stop,
    [Symbol.asyncDispose]: stop,
  };
}
