import { Runtime, createLogger, defineActor } from '@reins/runtime';
import { z } from 'zod';

/**
 * Idle agents in their own process: `node bench/dist/agents-process.js '<json>'` (see
 * `AgentsConfig`). Prints `ready` on stdout once every agent started; exits on SIGTERM after
 * closing its connection.
 */
export const AgentsConfig = z.object({
  url: z.string(),
  role: z.string(),
  /** Agent ids are `<prefix><i>`. */
  prefix: z.string(),
  count: z.number().int().positive(),
  /** Also `count` bare subscriptions to this subject that answer at once (the raw baseline). */
  raw: z.string().optional(),
  /** Heartbeat interval (default 2 s, as deployed). */
  heartbeatMs: z.number().int().positive().default(2000),
});
export type AgentsConfig = z.infer<typeof AgentsConfig>;

async function main(): Promise<void> {
  const cfg = AgentsConfig.parse(JSON.parse(process.argv[2] ?? '{}'));
  const rt = await Runtime.connect({
    servers: cfg.url,
    logger: createLogger({ level: 'silent' }),
    name: `bench-agents-${cfg.prefix}`,
    heartbeatMs: cfg.heartbeatMs,
    ensureInfrastructure: false,
  });
  for (let i = 0; i < cfg.count; i++)
    await rt.start(defineActor({ role: cfg.role, agentId: `${cfg.prefix}${i}` }));
  if (cfg.raw) {
    const reply = new Uint8Array(16);
    for (let i = 0; i < cfg.count; i++)
      rt.nc.subscribe(cfg.raw, { callback: (_e, m) => void m.respond(reply) });
    await rt.nc.flush();
  }
  process.stdout.write('ready\n');
  process.once('SIGTERM', () => {
    void rt.close().finally(() => process.exit(0));
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
