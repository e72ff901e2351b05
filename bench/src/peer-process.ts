import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { PEER_FRAMEWORKS, peerWorkload } from './peers.js';

/**
 * One peer framework measured in its own process, so its RSS is its own and its modules do not
 * load into the bench: `node bench/dist/peer-process.js '<json>'` (see `PeerConfig`). Prints one
 * JSON line (`PeerOutcome`) on stdout and exits.
 */
export const PeerConfig = z.object({
  framework: z.enum(PEER_FRAMEWORKS),
  /** Tool-call turns per run. */
  n: z.number().int().positive(),
  /** Measured runs, after `warmup` unmeasured ones. */
  runs: z.number().int().positive(),
  warmup: z.number().int().nonnegative(),
  pgUrl: z.string().optional(),
});
export type PeerConfig = z.infer<typeof PeerConfig>;

export const PeerOutcome = z.object({
  /** Wall time of the measured runs ÷ their tool-call turns. */
  usPerStep: z.number(),
  /** Runs whose tool calls were not exactly N. */
  wrongRuns: z.number().int(),
  /** Resident set size after the runs, and its peak (bytes). */
  rssBytes: z.number(),
  peakRssBytes: z.number(),
});
export type PeerOutcome = z.infer<typeof PeerOutcome>;

/** A field of /proc/self/status in bytes (VmRSS, VmHWM), or 0 where there is none. */
export function procStatusBytes(pid: number | 'self', field: 'VmRSS' | 'VmHWM'): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1];
    return kb === undefined ? 0 : Number(kb) * 1024;
  } catch {
    return 0;
  }
}

async function main(): Promise<void> {
  const cfg = PeerConfig.parse(JSON.parse(process.argv[2] ?? '{}'));
  const workload = await peerWorkload(cfg.framework, cfg.pgUrl);
  let wrongRuns = 0;
  try {
    for (let i = 0; i < cfg.warmup; i++) await workload.runOnce(cfg.n);
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
