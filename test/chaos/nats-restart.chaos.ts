import { describe, it } from 'vitest';
import { natsRestartScenario } from './support.js';

// Known issue (docs/reliability.md, K2): after a nats-server crash mid-run the run sometimes
// stalls (no step after the one in flight) past the 90 s guard, and otherwise takes about a
// minute to recover. Run it with REINS_CHAOS_KNOWN_ISSUES=1.
describe.runIf(process.env['REINS_CHAOS_KNOWN_ISSUES'] === '1')(
  'chaos: nats-server crash and restart',
  () => {
    it('kill -9 and restart on the same file store mid-run: the run completes, nothing acknowledged is lost', async () => {
      await natsRestartScenario();
    });
  },
);
