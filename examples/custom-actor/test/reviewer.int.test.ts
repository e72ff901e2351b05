import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { HaltedError, createGrantSigner, type ReinsError, type TraceEvent } from '@reins/protocol';
import { Runtime, createLogger, decodeReply, subscribeTraces } from '@reins/runtime';
import { connect, type ReinsClient } from '@reins/client';
import { startSupervisor, type Supervisor } from '@reins/supervisor';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { Review, ReviewRequest, reviewSubject, startReviewer } from '../src/reviewer.js';

const quiet = () => createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' });

const GOOD =
  'Reins governs agent swarms. Every tool call needs a grant from the supervisor. ' +
  'Budgets hold across sub-agents. A halt reaches every agent, including tools already running.';

describe('custom actor: reviewer', () => {
  let nats: NatsServer;
  let runtime: Runtime;
  let supervisor: Supervisor;
  let client: ReinsClient;

  beforeAll(async () => {
    nats = await startNatsServer();
    runtime = await Runtime.connect({ servers: nats.url, logger: quiet() });
    supervisor = await startSupervisor(runtime, { signer: createGrantSigner().signer });
    // 50 ms per sentence: slow enough that a halt lands mid-review.
    await startReviewer(runtime, { agentId: 'reviewer-1', msPerSentence: 50 });
    client = await connect({ servers: nats.url, logger: quiet(), identity: 'test' });
  });

  afterAll(async () => {
    await client.close();
    await supervisor.stop();
    await runtime.close();
    await nats.stop();
  });

  const review = (req: z.input<typeof ReviewRequest>) =>
    client.runtime.request(reviewSubject(runtime), ReviewRequest, Review, req, {
      timeoutMs: 30_000,
    });

  it('scores text with typed request and reply, and traces its work into the run', async () => {
    const good = await review({ runId: 'run-good', text: GOOD });
    expect(good).toEqual({
      score: 100,
      verdict: 'accept',
      findings: [],
      sentences: 4,
      reviewer: 'reviewer-1',
    });

    const bad = await review({
      runId: 'run-bad',
      text: 'This is basically fine. Trust me.',
      rubric: { banned: ['basically'] },
    });
    expect(bad.verdict).toBe('reject');
    expect(bad.findings.map((f) => f.rule).sort()).toEqual(['banned-word', 'too-short']);
    expect(bad.score).toBe(30);

    const events: TraceEvent[] = [];
    await using sub = await subscribeTraces(client.runtime, { runId: 'run-bad', role: 'reviewer' });
    for await (const e of sub) {
      events.push(e);
      if (e.event === 'review.done') break;
    }
    expect(events.map((e) => e.event)).toEqual(['review.start', 'review.finding', 'review.done']);
    expect(events.at(-1)?.data).toMatchObject({ score: 30, verdict: 'reject' });
  });

  it('answers malformed requests with a coded error and keeps serving', async () => {
    const garbage = await client.runtime.nc
      .request(reviewSubject(runtime), new Uint8Array([0xc1, 0xff]), { timeout: 5000 })
      .then((m) => decodeReply(m, Review))
      .catch((e: unknown) => e);
    expect((garbage as ReinsError).code).toBe('BAD_REQUEST');
    const invalid = await client.runtime
      .request(reviewSubject(runtime), z.unknown(), Review, { runId: 'r', text: '' })
      .catch((e: unknown) => e);
    expect((invalid as ReinsError).code).toBe('BAD_REQUEST');
    expect((await review({ runId: 'run-after', text: GOOD })).verdict).toBe('accept');
  });

  it('a halt of the run aborts the review in flight and refuses new work for that run', async () => {
    const runId = 'run-halted';
    // 200 sentences at 50 ms each: ten seconds of work, unless halted.
    const long = Array.from({ length: 200 }, (_, i) => `Sentence number ${i} is here.`).join(' ');
    let onStart = () => {};
    const started = new Promise<void>((resolve) => (onStart = resolve));
    await using _sub = await subscribeTraces(
      client.runtime,
      { runId, event: 'review.start' },
      { callback: () => onStart() },
    );
    const inFlight = review({ runId, text: long }).catch((e: unknown) => e);
    await started;
    const reply = await client.halt({ kind: 'run', runId }, 'enough reviewing');
    expect(reply.acked).toContain('reviewer-1');

    expect(await inFlight).toBeInstanceOf(HaltedError);
    await expect(review({ runId, text: GOOD })).rejects.toBeInstanceOf(HaltedError);
    // Other runs are not affected.
    expect((await review({ runId: 'run-other', text: GOOD })).verdict).toBe('accept');
  });
});
