#!/usr/bin/env node
// node examples/trace-watchdog/dist/main.js --max-calls 5 [--window 60] [--nats URL] [--dry-run]
// Halts any run that calls the same tool more than --max-calls times within --window seconds.
import { parseArgs } from 'node:util';
import { connect } from '@reins/client';
import { createLogger } from '@reins/runtime';
import { startWatchdog } from './watchdog.js';

const USAGE =
  'usage: node examples/trace-watchdog/dist/main.js --max-calls N [--window SECONDS] [--nats URL] [--dry-run] [--from-start]';

function fail(message: string): never {
  process.stderr.write(`trace-watchdog: ${message}\n${USAGE}\n`);
  process.exit(2);
}

let values;
try {
  ({ values } = parseArgs({
    options: {
      'max-calls': { type: 'string' },
      window: { type: 'string', default: '60' },
      nats: { type: 'string' },
      'dry-run': { type: 'boolean', default: false },
      'from-start': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  }));
} catch (err) {
  fail(err instanceof Error ? err.message : String(err));
}
if (values.help) {
  process.stdout.write(`${USAGE}\n`);
  process.exit(0);
}
const maxCalls = Number(values['max-calls']);
if (values['max-calls'] === undefined || !Number.isSafeInteger(maxCalls) || maxCalls < 1)
  fail('--max-calls must be a whole number of at least 1');
const windowS = Number(values.window);
if (!Number.isFinite(windowS) || windowS <= 0)
  fail('--window must be a positive number of seconds');
const servers = values.nats ?? process.env['NATS_URL'] ?? 'nats://127.0.0.1:4222';

const client = await connect({
  servers,
  name: 'reins-trace-watchdog',
  identity: 'trace-watchdog',
  logger: createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'warn' }),
}).catch((err: unknown) =>
  fail(`cannot connect to NATS at ${servers}: ${err instanceof Error ? err.message : String(err)}`),
);

const print = (value: Record<string, unknown>) =>
  process.stdout.write(`${JSON.stringify({ ts: new Date().toISOString(), ...value })}\n`);

const watchdog = await startWatchdog(client, {
  maxCalls,
  windowMs: windowS * 1000,
  from: values['from-start'] ? 'start' : 'new',
  dryRun: values['dry-run'],
  onTrip: (t) =>
    print({
      type: values['dry-run'] ? 'would-halt' : 'halted',
      runId: t.runId,
      tool: t.tool,
      calls: t.calls,
      acked: t.halt?.acked,
      missing: t.halt?.missing,
    }),
  onError: (err, t) =>
    print({
      type: 'halt-failed',
      runId: t.runId,
      tool: t.tool,
      error: err instanceof Error ? err.message : String(err),
    }),
});
print({ type: 'watching', nats: servers, maxCalls, windowSeconds: windowS });

const shutdown = () => {
  void watchdog
    .stop()
    .then(() => client.close())
    .finally(() => process.exit(0));
};
process.once('SIGINT', shutdown);
process.once('SIGTERM', shutdown);
