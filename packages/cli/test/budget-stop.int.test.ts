import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { jsonLines, reins, reinsUp, type UpProcess } from './cli-process.js';

const GOAL = 'Read every document in docs/ and write a report to report.md';

interface Stopped {
  run: {
    status: string;
    stopReason: string;
    error: { message: string; details: Record<string, number> };
  };
}

describe('a run stopped by its budget says why it stopped below the cap', () => {
  let nats: NatsServer;
  let up: UpProcess;
  let env: Record<string, string>;

  beforeAll(async () => {
    nats = await startNatsServer();
    env = { NATS_URL: nats.url };
    up = reinsUp(['--insecure', '--log-level', 'warn'], env);
    await up.ready;
  });

  afterAll(async () => {
    await up?.stop();
    await nats?.stop();
  });

  it('names the worst-case reservation that did not fit, and what was left', async () => {
    const json = await reins(['run', GOAL, '--follow', '--json', '--budget-usd', '0.001'], env);
    expect(json.code).toBe(3);
    const { run } = jsonLines(json.stdout).at(-1) as Stopped;
    expect(run.stopReason).toBe('BUDGET_EXCEEDED');
    const d = run.error.details;
    expect(d['cap']).toBe(0.001);
    expect(d['requested']).toBeGreaterThan(0);
    expect(d['committed']).toBeLessThan(0.001);
    expect(d['committed']! + d['reserved']! + d['requested']!).toBeGreaterThan(0.001);
    expect(run.error.message).toContain("this call's worst-case reservation");

    const text = await reins(['run', GOAL, '--follow', '--budget-usd', '0.001'], env);
    expect(text.code).toBe(3);
    expect(text.stdout).toMatch(
      /■ stopped BUDGET_EXCEEDED after .*\n {2}the next call was not made: its worst-case reservation of \$0\.\d+ \(estimated input tokens \+ output cap, priced\) did not fit in the \$0\.\d+ left of the run's \$0\.001 cap \(\$0\.\d+ spent\)/,
    );
  });
});
