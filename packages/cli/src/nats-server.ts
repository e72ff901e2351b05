import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { CliError, ExitCode } from './errors.js';

/** How to install nats-server; shown wherever it is missing. */
export const INSTALL_NATS_HINT =
  'install nats-server (Debian: `sudo apt-get install -y nats-server`, macOS: ' +
  '`brew install nats-server`, or a release from https://github.com/nats-io/nats-server/releases), ' +
  'set NATS_SERVER_BIN to its path, or set NATS_URL to use a running server';

/**
 * Path of the nats-server binary: `NATS_SERVER_BIN`, else `nats-server` on `PATH`, else the
 * sbin directories Debian installs it into. Undefined when there is none; a
 * `NATS_SERVER_BIN` that does not exist is a configuration error (exit 2).
 */
export function findNatsServer(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const fromEnv = env['NATS_SERVER_BIN'];
  if (fromEnv) {
    if (!existsSync(fromEnv)) {
      throw new CliError(`NATS_SERVER_BIN=${fromEnv} does not exist`, {
        exitCode: ExitCode.usage,
        hint: INSTALL_NATS_HINT,
      });
    }
    return fromEnv;
  }
  const dirs = [...(env['PATH'] ?? '').split(delimiter), '/usr/local/sbin', '/usr/sbin'];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = join(dir, 'nats-server');
    if (existsSync(candidate)) return candidate;
  }
  return undefined;
}

/** The version of a nats-server binary (`2.9.10`), or undefined when it does not run. */
export function natsServerVersion(bin: string): string | undefined {
  const out = spawnSync(bin, ['--version'], { encoding: 'utf8', timeout: 5000 });
  return /v?(\d+\.\d+\.\d+)/.exec(`${out.stdout ?? ''}${out.stderr ?? ''}`)?.[1];
}

/** Options of `startLocalNats`. */
export interface LocalNatsOptions {
  bin: string;
  /** Port to listen on (default: one the server picks). */
  port?: number;
  /** How long to wait for "Server is ready" (default 20 s). */
  readyTimeoutMs?: number;
  /** Receives each line nats-server logs after it is ready. */
  onLog?: (line: string) => void;
  /**
   * nats-server configuration text (e.g. the secure-mode `authorization` block), loaded with
   * `-c`; the command-line address, port and store still apply.
   */
  config?: string;
}

/** A nats-server with JetStream on a temp store, owned by this process. */
export interface LocalNats extends AsyncDisposable {
  readonly url: string;
  readonly port: number;
  readonly storeDir: string;
  readonly process: ChildProcess;
  /** SIGTERM, wait (SIGKILL after 5 s), remove the temp store. Safe to call twice. */
  stop(): Promise<void>;
}

const READY = /Server is ready/;
const LISTENING = /Listening for client connections on [^\s]*:(\d+)/;

/**
 * Starts nats-server with JetStream on 127.0.0.1 and a temp store dir, and resolves once it
 * logs that it is ready (no polling). The process runs in its own process group so a
 * terminal's Ctrl-C reaches only the CLI, which stops it after the services. Throws a
 * `CliError` with the server's last log lines when it exits or stays silent.
 */
export async function startLocalNats(options: LocalNatsOptions): Promise<LocalNats> {
  const storeDir = await mkdtemp(join(tmpdir(), 'reins-nats-'));
  const port = options.port ?? -1;
  const args = ['-a', '127.0.0.1', '-p', String(port), '-js', '-sd', storeDir];
  if (options.config !== undefined) {
    const file = join(storeDir, 'reins-up.conf');
    await writeFile(file, options.config, { mode: 0o600 });
    args.push('-c', file);
  }
  const child = spawn(options.bin, args, { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  let tail = '';
  let ready = false;
  let boundPort = port > 0 ? port : 0;
  const readyTimeoutMs = options.readyTimeoutMs ?? 20_000;
  try {
    await new Promise<void>((resolve, reject) => {
      let buffer = '';
      const timer = setTimeout(
        () => reject(new Error(`not ready after ${readyTimeoutMs} ms`)),
        readyTimeoutMs,
      );
      const onData = (d: Buffer) => {
        buffer += d.toString();
        const lines = buffer.split('\n');
        buffer = lines.pop() ?? '';
        for (const line of lines) {
          if (!line.trim()) continue;
          if (ready) {
            options.onLog?.(line);
            continue;
          }
          tail = `${tail}${line}\n`.slice(-2000);
          const m = LISTENING.exec(line);
          if (m?.[1]) boundPort = Number(m[1]);
          if (READY.test(line)) {
            ready = true;
            clearTimeout(timer);
            resolve();
          }
        }
      };
      child.stdout?.on('data', onData);
      child.stderr?.on('data', onData);
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`exited with ${signal ?? String(code)}`));
      });
    });
  } catch (cause) {
    child.kill('SIGKILL');
    process.removeListener('exit', killOnExit);
    await rm(storeDir, { recursive: true, force: true });
    const why = cause instanceof Error ? cause.message : String(cause);
    if (port > 0 && /address already in use/i.test(tail)) {
      throw new CliError(`port ${port} is already in use: nats-server cannot listen on it`, {
        cause,
        code: 'PORT_IN_USE',
        exitCode: ExitCode.usage,
        hint: 'pick another with --port, or omit --port for a free one',
      });
    }
    // Its errors say why; its start-up banner does not.
    const errors = tail.split('\n').filter((l) => /\[(ERR|FTL)\]/.test(l));
    const shown = (errors.length ? errors : tail.trimEnd().split('\n').slice(-5)).join('\n');
    throw new CliError(`nats-server failed to start (${why})\n${shown}`, {
      cause,
      hint:
        port > 0
          ? `is port ${port} already in use? pick another with --port, or omit it for a free one`
          : INSTALL_NATS_HINT,
    });
  }
  if (!boundPort) {
    child.kill('SIGKILL');
    throw new CliError('nats-server did not report its port');
  }
  let stopped: Promise<void> | undefined;
  const stop = () =>
    (stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = new Promise<void>((r) => child.once('exit', () => r()));
        child.kill('SIGTERM');
        const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(timer);
      }
      process.removeListener('exit', killOnExit);
      await rm(storeDir, { recursive: true, force: true });
    })());
  return {
    url: `nats://127.0.0.1:${boundPort}`,
    port: boundPort,
    storeDir,
    process: child,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}
