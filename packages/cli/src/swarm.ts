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
  /**
   * Starts more processes in the same swarm (secure mode starts the supervisor, which creates
   * the streams, before the others). Throws once stopping.
   */
  add(specs: readonly ServiceSpec[]): void;
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
 * Credentials are per role: a seed in the CLI's own environment (the client's, typically) must
 * never reach a service, which gets its role's seed from its spec or none.
 */
const CREDENTIAL_ENV = new Set(['REINS_NKEY_SEED', 'REINS_NKEY_SEED_FILE']);

function serviceEnv(own: Record<string, string>): NodeJS.ProcessEnv {
  const inherited = Object.entries(process.env).filter(([name]) => !CREDENTIAL_ENV.has(name));
  return { ...Object.fromEntries(inherited), ...own };
}

/**
 * Spawns each service as its own Node process in its own process group (so a terminal's
 * Ctrl-C reaches only the CLI, which then stops them in order), with stdout and stderr split
 * into lines for `onLog`. Services inherit the CLI's environment except nkey credentials
 * (`REINS_NKEY_SEED(_FILE)`), which only their spec can set.
 */
export function startServices(specs: readonly ServiceSpec[], hooks: ServiceHooks = {}): Services {
  const processes = new Map<string, ChildProcess>();
  let stopping: Promise<void> | undefined;
  const killAll = () => {
    for (const c of processes.values())
      if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  process.once('exit', killAll);
  const add = (more: readonly ServiceSpec[]) => {
    if (stopping) throw new CliError('the swarm is stopping; no new services');
    // Every entry point is checked before the first spawn: all or nothing.
    const mains = new Map(more.map((s) => [s.service, serviceMain(s.service)]));
    for (const spec of more) {
      const child = spawn(process.execPath, [mains.get(spec.service) ?? ''], {
        env: serviceEnv(spec.env),
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
  };
  try {
    add(specs);
  } catch (err) {
    process.removeListener('exit', killAll);
    throw err;
  }
  const isAlive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;
  return {
    processes,
    alive: () => [...processes].filter(([, c]) => isAlive(c)).map(([n]) => n),
    add,
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
