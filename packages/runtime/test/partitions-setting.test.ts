import { afterEach, describe, expect, it } from 'vitest';
import { ProtocolError } from '@reins/protocol';
import { Runtime } from '@reins/runtime';

// The partition count decides which subject a run's control requests go to, so a bad one must
// stop the process at start with the variable named — never fall back to a default silently
// (a planner on 32 partitions and a supervisor on 16 would miss each other's requests).
describe('REINS_PARTITIONS', () => {
  const saved = process.env['REINS_PARTITIONS'];
  afterEach(() => {
    if (saved === undefined) delete process.env['REINS_PARTITIONS'];
    else process.env['REINS_PARTITIONS'] = saved;
  });

  it('refuses a bad value before connecting, naming the variable', async () => {
    for (const bad of ['0', 'many', '2.5', '5000']) {
      process.env['REINS_PARTITIONS'] = bad;
      // Port 1 has no server: reaching it would be an UnavailableError instead.
      const err = await Runtime.connect({ servers: 'nats://127.0.0.1:1' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ProtocolError);
      expect((err as Error).message).toContain(`REINS_PARTITIONS="${bad}"`);
    }
  });

  it('refuses a bad option the same way', async () => {
    delete process.env['REINS_PARTITIONS'];
    const err = await Runtime.connect({ servers: 'nats://127.0.0.1:1', partitions: -3 }).catch(
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ProtocolError);
    expect((err as Error).message).toMatch(/^partitions: invalid partition count -3/);
  });
});
