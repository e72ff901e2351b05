import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { TraceEvent } from '@reins/protocol';
import { Runtime, createLogger, defineActor, payloadHeaders } from '@reins/runtime';
import { startNatsServer, type NatsServer } from '@reins/testing';
import { reins, spawnReins } from './cli-process.js';

describe('reins call and reins sub: any actor, no separate NATS CLI', () => {
  let nats: NatsServer;
  let runtime: Runtime;
  let env: Record<string, string>;

  beforeAll(async () => {
    nats = await startNatsServer();
    runtime = await Runtime.connect({
      servers: nats.url,
      logger: createLogger({ level: 'silent' }),
    });
    // A custom actor, as `reins new actor echo` would make one: served on <prefix>.actor.echo.
    await runtime.start(
      defineActor({
        role: 'echo',
        agentId: 'echo-1',
        setup(actor) {
          actor.handle(
            `${runtime.subjects.prefix}.actor.echo`,
            z.object({ runId: z.string(), text: z.string() }),
            (req) => {
              actor.trace(req.runId, 'echo.done', { chars: req.text.length });
              return { echo: req.text };
            },
            { reply: z.object({ echo: z.string() }), queue: 'echo' },
          );
        },
      }),
    );
    env = { NATS_URL: nats.url };
  });

  afterAll(async () => {
    await runtime?.close();
    await nats?.stop();
  });

  it('call sends JSON to a role and prints the reply; the actor’s schema refuses a bad one', async () => {
    const ok = await reins(['call', 'echo', '{"runId":"run_cli1","text":"hi"}', '--json'], env);
    expect(ok.stderr).toBe('');
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toEqual({ echo: 'hi' });

    const bad = await reins(['call', 'echo', '{"runId":"run_cli1","text":5}'], env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('text');
    expect(bad.stderr).toContain('[BAD_REQUEST]');

    const nobody = await reins(['call', 'nobody', '{}'], env);
    expect(nobody.code).toBe(1);
    expect(nobody.stderr).toContain('nothing answers on reins.v1.actor.nobody [NO_RESPONDERS]');

    const notJson = await reins(['call', 'echo', '{text'], env);
    expect(notJson.code).toBe(2);
    expect(notJson.stderr).toContain('the request is not JSON');
  });

  it('sub prints the messages of a pattern decoded, and flags one its schema refuses', async () => {
    const p = spawnReins(['sub', 'trace.>', '--count', '2'], env);
    await p.waitFor((o) => o.stderr.includes('listening on reins.v1.trace.>'));
    const call = await reins(['call', 'echo', '{"runId":"run_cli2","text":"abc"}'], env);
    expect(call.code).toBe(0);
    // A message claiming to be a trace event that is not one.
    runtime.nc.publish(
      `${runtime.subjects.prefix}.trace.run_x.echo.echo-1.fake`,
      new Uint8Array([0x81, 0xa1, 0x61, 0x01]), // msgpack {"a": 1}
      { headers: payloadHeaders(TraceEvent) },
    );
    const r = await p.done;
    expect(r.code).toBe(0);
    const [first, second] = r.stdout.trim().split('\n');
    expect(first).toMatch(
      /^reins\.v1\.trace\.run_cli2\.echo\.echo-1\.echo\.done reins\.TraceEvent \{.*"chars":3/,
    );
    expect(second).toMatch(
      /^reins\.v1\.trace\.run_x\.echo\.echo-1\.fake reins\.TraceEvent ✗ invalid/,
    );
  });
});
