import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** One service process of the demo swarm. */
export interface ServiceSpec {
  name: string;
  service: 'supervisor' | 'planner' | 'executor';
  env: Record<string, string>;
}

/** A running swarm of service processes; `stop()` sends SIGTERM and waits for every exit. */
export interface Swarm {
  readonly processes: Map<string, ChildProcess>;
  stop(): Promise<void>;
}

const serviceMain = (service: string) =>
  fileURLToPath(new URL(`../../../services/${service}/dist/main.js`, import.meta.url));

/**
 * Spawns each service as its own Node process (logs go to `onLog`, one line at a time). A
 * service that exits early is reported through `onExit`.
 */
export function startSwarm(
  specs: readonly ServiceSpec[],
  hooks: {
    onLog?: (name: string, line: string) => void;
    onExit?: (name: string, code: number | null) => void;
  } = {},
): Swarm {
  const processes = new Map<string, ChildProcess>();
  let stopping = false;
  for (const spec of specs) {
    const child = spawn(process.execPath, [serviceMain(spec.service)], {
      env: {
        ...process.env,
        REINS_LOG_LEVEL: process.env['REINS_LOG_LEVEL'] ?? 'warn',
        ...spec.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    processes.set(spec.name, child);
    let buffer = '';
    const onData = (d: Buffer) => {
      buffer += d.toString();
      const lines = buffer.split('\n');
      buffer = lines.pop() ?? '';
      for (const line of lines) if (line.trim()) hooks.onLog?.(spec.name, line);
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => {
      if (!stopping) hooks.onExit?.(spec.name, code);
    });
  }
  return {
    processes,
    async stop() {
      stopping = true;
      await Promise.all(
        [...processes.values()].map(
          (c) =>
            new Promise<void>((resolve) => {
              if (c.exitCode !== null || c.signalCode !== null) return resolve();
              const t = setTimeout(() => c.kill('SIGKILL'), 15_000);
              c.once('exit', () => {
                clearTimeout(t);
                resolve();
              });
              c.kill('SIGTERM');
            }),
        ),
      );
    },
  };
}
