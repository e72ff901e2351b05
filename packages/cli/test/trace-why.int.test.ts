// `reins run --follow` says why nothing happens: a model endpoint nobody answers shows up in the
// tree as retries with their reason and attempt count, not only in the planner's log.
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { CLI, TEST_REINS_HOME, reinsUp, type UpProcess } from './cli-process.js';

/** A loopback port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

/** Runs `reins <args>` until its output matches `until`, then stops it; returns the output. */
function reinsUntil(args: string[], env: Record<string, string>, until: RegExp, timeoutMs: number) {
  return new Promise<string>((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      env: { ...process.env, NO_COLOR: '1', REINS_HOME: TEST_REINS_HOME, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`no match for ${String(until)} within ${timeoutMs} ms:\n${out}`));
    }, timeoutMs);
    const onData = (d: Buffer) => {
      out += d.toString();
      if (until.test(out)) {
        clearTimeout(timer);
        child.kill('SIGTERM');
        resolve(out);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
  });
}

describe('reins run --follow says why a run does not move', () => {
  let nats: NatsServer;
  let up: UpProcess;
  let env: Record<string, string>;

  beforeAll(async () => {
    nats = await startNatsServer();
    env = { NATS_URL: nats.url };
    const port = await closedPort();
    up = reinsUp(['--insecure', '--planners', '1', '--executors', '1', '--log-level', 'warn'], {
      ...env,
      OPENAI_BASE_URL: `http://127.0.0.1:${port}/v1`,
      OPENAI_API_KEY: 'test',
    });
    await up.ready;
  });

  afterAll(async () => {
    await up.stop();
    await nats.stop();
  });

  it('shows each retry of a step whose model endpoint cannot be reached: reason and attempt', async () => {
    const out = await reinsUntil(
      ['run', 'Summarise docs/ into report.md', '--follow', '--max-steps', '5'],
      env,
      /retry 2\/\d+/,
      90_000,
    );
    expect(out).toMatch(/↻ retry 1\/20 in \d+(\.\d)?s UNAVAILABLE .+/);
    expect(out).toMatch(/↻ retry 2\/20/);
    // The reason is the model call's: the endpoint could not be reached.
    expect(out).toMatch(/retry 1\/20 .*(connect|Connection|ECONNREFUSED|reach)/i);
  });
});
