import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { CliError, ExitCode } from './errors.js';

/** The service programs a swarm is made of. */
export type ServiceName = 'supervisor' | 'planner' | 'executor';

/** One process of a swarm. */
export interface ServiceSpec {
  /** Display name and log prefix, e.g. `planner-1`. */
  name: string;
  service: ServiceName;
  env: Record<string, string>;
}

/** Lifecycle hooks of `startServices`. */
export interface ServiceHooks {
  onLog?: (name: string, line: string, stream: 'stdout' | 'stderr') => void;
  /** A process ended while the swarm was not stopping. */
  onExit?: (name: string, code: number | null, signal: NodeJS.Signals | null) => void;
}

/** Running service processes; `stop()` sends SIGTERM to each and waits for every exit. */
export interface Services {
  readonly processes: ReadonlyMap<string, ChildProcess>;
  /** Names of processes still alive. */
  alive(): string[];
  /** SIGTERM, wait up to `deadlineMs` (then SIGKILL). Safe to call twice. */
  stop(deadlineMs?: number): Promise<void>;
  /** SIGKILL every process now (a second Ctrl-C). */
  kill(): void;
}

/**
 * Path of a service's entry point, next to the CLI in the monorepo
 * (`services/<name>/dist/main.js`). Throws a configuration error (exit 2) when it is not built.
 */
export function serviceMain(service: ServiceName): string {
  const path = fileURLToPath(new URL(`../../../services/${service}/dist/main.js`, import.meta.url));
  if (!existsSync(path)) {
    throw new CliError(`the ${service} service is not built (${path} is missing)`, {
      exitCode: ExitCode.usage,
      hint: 'build the monorepo first: `pnpm run build` (or `./dev setup`)',
    });
  }
  return path;
}

/**
 * Spawns each service as its own Node process in its own process group (so a terminal's
 * Ctrl-C reaches only the CLI, which then stops them in order), with stdout and stderr split
 * into lines for `onLog`.
 */
export function startServices(specs: readonly ServiceSpec[], hooks: ServiceHooks = {}): Services {
  const mains = new Map(specs.map((s) => [s.service, serviceMain(s.service)]));
  const processes = new Map<string, ChildProcess>();
  let stopping: Promise<void> | undefined;
  const killAll = () => {
    for (const c of processes.values())
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  process.once('exit', killAll);
  for (const spec of specs) {
    const child = spawn(process.execPath, [mains.get(spec.service) ?? ''], {
      env: { ...process.env, ...spec.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    processes.set(spec.name, child);
    const lines = (stream: 'stdout' | 'stderr') => {
      let buffer = '';
      return (d: Buffer) => {
        buffer += d.toString();
        const parts = buffer.split('\n');
        buffer = parts.pop() ?? '';
        for (const line of parts) if (line.trim()) hooks.onLog?.(spec.name, line, stream);
      };
    };
    child.stdout?.on('data', lines('stdout'));
    child.stderr?.on('data', lines('stderr'));
    child.once('error', (err) =>
      hooks.onLog?.(spec.name, `failed to start: ${err.message}`, 'stderr'),
    );
    child.once('exit', (code, signal) => {
      if (!stopping) hooks.onExit?.(spec.name, code, signal);
    });
  }
  const isAlive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;
  return {
    processes,
    alive: () => [...processes].filter(([, c]) => isAlive(c)).map(([n]) => n),
    kill: killAll,
    stop(deadlineMs = 15_000) {
      stopping ??= (async () => {
        await Promise.all(
          [...processes.values()].map(
            (c) =>
              new Promise<void>((resolve) => {
                if (!isAlive(c)) return resolve();
                const timer = setTimeout(() => c.kill('SIGKILL'), deadlineMs);
                c.once('exit', () => {
                  clearTimeout(timer);
                  resolve();
                });
                c.kill('SIGTERM');
              }),
          ),
        );
        process.removeListener('exit', killAll);
      })();
      return stopping;
    },
  };
}
