import { describe, it } from 'vitest';
import { natsRestartScenario } from './support.js';

// Scenario 3 (docs/reliability.md; K2, fixed): nats-server is SIGKILLed mid-run and restarted on
// its file store. The run completes, and the trace subscription follows it across the restart.
describe('chaos: nats-server crash and restart', () => {
  it('kill -9 and restart on the same file store mid-run: the run completes, nothing acknowledged is lost', async () => {
    await natsRestartScenario();
  });
});
