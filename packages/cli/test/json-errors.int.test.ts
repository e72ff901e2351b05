import { describe, expect, it } from 'vitest';
import { freePort, startNatsServer } from '@reins/testing';
import { reins } from './cli-process.js';

/** The one JSON object a `--json` command prints on stderr when it fails. */
function jsonError(stderr: string): { code: string; message: string; hint: string | null } {
  const lines = stderr.split('\n').filter((l) => l.trim());
  expect(lines).toHaveLength(1);
  return JSON.parse(lines[0] ?? '') as { code: string; message: string; hint: string | null };
}

describe('errors under --json are one JSON object {code, message, hint}', () => {
  it('no supervisor: reins run --json', async () => {
    await using nats = await startNatsServer();
    const r = await reins(['run', 'a goal', '--json', '--nats', nats.url]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(jsonError(r.stderr)).toEqual({
      code: 'NO_SUPERVISOR',
      message: 'no supervisor answered on reins.v1.runs.start',
      hint: expect.stringContaining('reins up') as string,
    });
  });

  it('NATS unreachable, bad usage, a bad value', async () => {
    const url = `nats://127.0.0.1:${await freePort()}`;
    const down = await reins(['runs', '--json', '--nats', url]);
    expect(down.code).toBe(1);
    expect(jsonError(down.stderr)).toMatchObject({
      code: 'NATS_UNREACHABLE',
      message: `cannot connect to NATS at ${url}`,
    });

    const missing = await reins(['run', '--json']);
    expect(missing.code).toBe(2);
    expect(jsonError(missing.stderr)).toEqual({
      code: 'USAGE',
      message: "missing required argument 'goal'",
      hint: 'see `reins run --help` (every command: `reins --help`)',
    });

    const bad = await reins(['budget', 'not an id!', '--json']);
    expect(bad.code).toBe(2);
    expect(jsonError(bad.stderr)).toMatchObject({ code: 'USAGE' });
  });

  it('without --json, usage errors read like every other error: reins: error: and what to do:', async () => {
    const r = await reins(['halts']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe(
      "reins: error: unknown command 'halts'\n  what to do: did you mean halt? — see `reins --help`\n",
    );
    const option = await reins(['ps', '--bogus']);
    expect(option.code).toBe(2);
    expect(option.stderr).toBe(
      "reins: error: unknown option '--bogus'\n  what to do: see `reins ps --help` (every command: `reins --help`)\n",
    );
  });
});
