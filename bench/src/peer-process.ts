import { PeerConfig, peerWorkload, procStatusBytes, type PeerOutcome } from './peers.js';

/**
 * One peer framework measured in its own process, so its RSS is its own and its modules do not
 * load into the bench: `node bench/dist/peer-process.js '<json>'` (see `PeerConfig`). Prints one
 * JSON line (`PeerOutcome`) on stdout and exits.
 */

async function main(): Promise<void> {
  const cfg = PeerConfig.parse(JSON.parse(process.argv[2] ?? '{}'));
  const workload = await peerWorkload(cfg.framework, cfg.pgUrl);
  let wrongRuns = 0;
  try {
    // Warm-up runs (JIT, connections) of at most 10 turns: long ones would only cost time.
    for (let i = 0; i < cfg.warmup; i++) await workload.runOnce(Math.min(cfg.n, 10));
    const start = performance.now();
    for (let i = 0; i < cfg.runs; i++) if ((await workload.runOnce(cfg.n)) !== cfg.n) wrongRuns++;
    const elapsedMs = performance.now() - start;
    const outcome: PeerOutcome = {
      usPerStep: (elapsedMs * 1000) / (cfg.runs * cfg.n),
      wrongRuns,
      rssBytes: procStatusBytes('self', 'VmRSS') || process.memoryUsage().rss,
      peakRssBytes: procStatusBytes('self', 'VmHWM'),
    };
    process.stdout.write(`${JSON.stringify(outcome)}\n`);
  } finally {
    await workload.close();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
