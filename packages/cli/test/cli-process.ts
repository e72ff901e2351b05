// Runs the built `reins` binary as a user would: a child process with its own env.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const CLI = fileURLToPath(new URL('../dist/main.js', import.meta.url));

/**
 * The `REINS_HOME` of every spawned `reins` unless a test sets its own (or `undefined`): keys
 * `reins up` generates land in this throw-away directory, never in the checkout's `.reins/`,
 * and keys someone made there are never picked up.
 */
export const TEST_REINS_HOME = mkdtempSync(join(tmpdir(), 'reins-home-'));
process.once('exit', () => rmSync(TEST_REINS_HOME, { recursive: true, force: true }));

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function childEnv(env: Record<string, string | undefined>): NodeJS.ProcessEnv {
  // The test decides what the CLI sees: no inherited NATS_URL, keys, credentials or colours.
  const dropped = new Set([
    'NATS_URL',
    'FORCE_COLOR',
    'REINS_PREFIX',
    'REINS_SUPERVISOR_SEED',
    'REINS_SUPERVISOR_SEED_FILE',
    'REINS_NKEY_SEED',
    'REINS_NKEY_SEED_FILE',
  ]);
  const merged = { ...process.env, NO_COLOR: '1', REINS_HOME: TEST_REINS_HOME, ...env };
  return Object.fromEntries(
    Object.entries(merged).filter(
      (kv): kv is [string, string] => kv[1] !== undefined && (!dropped.has(kv[0]) || kv[0] in env),
    ),
  );
}

/** Runs `reins <args>` to the end; SIGKILLs it after `timeoutMs` (a hang, not a timing). */
export function reins(
  args: string[],
  env: Record<string, string | undefined> = {},
  timeoutMs = 60_000,
  options: { cwd?: string } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      env: childEnv(env),
      ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** JSON lines of a `--json` output. */
export function jsonLines(stdout: string): unknown[] {
  return stdout
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as unknown);
}

export interface UpInfo {
  type: 'ready';
  natsUrl: string;
  agents: string[];
  sandbox: string;
  publicKey: string;
  /** With `--secure`: the key directory and the client's seed file. */
  secure?: { keys: string; clientSeedFile: string; generated: boolean };
}

/** A running `reins up --json`; `ready` resolves with its ready line. */
export interface UpProcess {
  readonly child: ChildProcess;
  readonly ready: Promise<UpInfo>;
  readonly lines: string[];
  /** What it wrote to stderr so far (the first 64 KiB). */
  stderr(): string;
  /** SIGTERM and wait for the exit code. */
  stop(): Promise<number | null>;
}

export function reinsUp(
  args: string[],
  env: Record<string, string | undefined> = {},
  options: { cwd?: string } = {},
): UpProcess {
  const child = spawn(process.execPath, [CLI, 'up', '--json', ...args], {
    env: childEnv(env),
    ...(options.cwd !== undefined ? { cwd: options.cwd } : {}),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(0, 65_536)));
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code) => resolve(code)),
  );
  const ready = new Promise<UpInfo>((resolve, reject) => {
    let buffer = '';
    child.stdout.on('data', (d: Buffer) => {
      buffer += d.toString();
      const parts = buffer.split('\n');
      buffer = parts.pop() ?? '';
      for (const line of parts) {
        if (!line.trim()) continue;
        lines.push(line);
        const msg = JSON.parse(line) as { type?: string };
        if (msg.type === 'ready') resolve(msg as UpInfo);
      }
    });
    void exited.then((code) =>
      reject(
        new Error(
          `reins up exited (${String(code)}) before ready:\n${stderr.slice(-4000)}\n${lines.join('\n')}`,
        ),
      ),
    );
  });
  ready.catch(() => undefined);
  return {
    child,
    ready,
    lines,
    stderr: () => stderr,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

/** A running `reins` command a test talks to while it runs (signals, output as it comes). */
export interface ReinsProcess {
  readonly child: ChildProcess;
  /** Resolves once stdout holds `text` (rejects when the command exits before). */
  waitForStdout(text: string): Promise<void>;
  /** Resolves once `test` holds for the output so far (rejects when the command exits before). */
  waitFor(test: (out: { stdout: string; stderr: string }) => boolean): Promise<void>;
  /** Resolves with the result once the command has exited. */
  readonly done: Promise<CliResult>;
}

/**
 * Starts `reins <args>` without waiting for it; SIGKILLs it after `timeoutMs` (a hang). With
 * `tty`, it runs under `script`, with a terminal of `tty.columns` as its stdout.
 */
export function spawnReins(
  args: string[],
  env: Record<string, string | undefined> = {},
  timeoutMs = 60_000,
  options: { tty?: { columns: number } } = {},
): ReinsProcess {
  const argv = [CLI, ...args];
  const quoted = (a: string) => `'${a.replaceAll("'", "'\\''")}'`;
  const child = options.tty
    ? spawn(
        'script',
        [
          '-qec',
          `stty cols ${options.tty.columns} rows 50; exec ${[process.execPath, ...argv].map(quoted).join(' ')}`,
          '/dev/null',
        ],
        { env: childEnv(env), stdio: ['pipe', 'pipe', 'pipe'] },
      )
    : spawn(process.execPath, argv, { env: childEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  const out = { stdout: '', stderr: '' };
  const waiters = new Set<{ test: (o: typeof out) => boolean; resolve: () => void }>();
  const check = () => {
    for (const w of [...waiters]) {
      if (w.test(out)) {
        waiters.delete(w);
        w.resolve();
      }
    }
  };
  child.stdout?.on('data', (d: Buffer) => {
    out.stdout += d.toString();
    check();
  });
  child.stderr?.on('data', (d: Buffer) => {
    out.stderr += d.toString();
    check();
  });
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const done = new Promise<CliResult>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, ...out });
    });
  });
  const waitFor = (test: (o: typeof out) => boolean): Promise<void> => {
    if (test(out)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      waiters.add({ test, resolve });
      void done.then((r) =>
        reject(
          new Error(
            `reins exited (${String(r.code)}) before it was expected to:\n${r.stdout}\n${r.stderr}`,
          ),
        ),
      );
    });
  };
  return {
    child,
    done,
    waitFor,
    waitForStdout: (text) => waitFor((o) => o.stdout.includes(text)),
  };
}
