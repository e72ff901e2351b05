import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { reins, reinsUp, type UpProcess } from './cli-process.js';

interface Agent {
  agentId: string;
  role: string;
  status: string;
}

describe('reins ps right after halt and resume', () => {
  let nats: NatsServer;
  let up: UpProcess;
  let env: Record<string, string>;

  beforeAll(async () => {
    nats = await startNatsServer();
    env = { NATS_URL: nats.url };
    up = reinsUp(['--insecure', '--log-level', 'warn', '--executors', '2'], env);
    await up.ready;
  });

  afterAll(async () => {
    await up?.stop();
    await nats?.stop();
  });

  const statuses = async () => {
    const r = await reins(['ps', '--json'], env);
    expect(r.code).toBe(0);
    return Object.fromEntries(
      (JSON.parse(r.stdout) as Agent[])
        .filter((a) => a.role !== 'supervisor')
        .map((a) => [a.agentId, a.status]),
    );
  };

  it('shows the new status as soon as the command has returned', async () => {
    expect(Object.values(await statuses())).toEqual(['running', 'running', 'running']);
    const halt = await reins(['halt', '--all', '--reason', 'ps test'], env);
    expect(halt.code).toBe(0);
    expect(Object.values(await statuses())).toEqual(['halted', 'halted', 'halted']);
    const resume = await reins(['resume', '--all'], env);
    expect(resume.code).toBe(0);
    expect(Object.values(await statuses())).toEqual(['running', 'running', 'running']);
  });
});
