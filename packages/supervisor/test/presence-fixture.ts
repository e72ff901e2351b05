import type { Runtime } from '@reins/runtime';

/** Resolves once every agent in `ids` is in presence (KV `reins_agents`); fails after 10 s. */
export async function presenceOf(rt: Runtime, ids: string[]): Promise<void> {
  const kv = await rt.agentsBucket();
  const watch = await kv.watch();
  const seen = new Set<string>();
  const timer = setTimeout(() => watch.stop(), 10_000);
  try {
    for await (const e of watch) {
      if (e.operation === 'PUT') seen.add(e.key);
      if (ids.every((id) => seen.has(id))) return;
    }
    throw new Error(
      `agents not in presence within 10 s: ${ids.filter((id) => !seen.has(id)).join(', ')}`,
    );
  } finally {
    clearTimeout(timer);
    watch.stop();
  }
}
