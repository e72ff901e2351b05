import { Buckets, Heartbeat, decode } from '@reins/protocol';
import { bucketKeys } from './infrastructure.js';
import type { Runtime } from './runtime.js';
import { retryTransport } from './transport-retry.js';

/** An agent as seen in the presence bucket. `status` is `lost` when its heartbeat expired. */
export interface AgentPresence extends Heartbeat {
  /** Milliseconds since its last heartbeat. */
  ageMs: number;
}

/**
 * Lists agents from KV `reins_agents`. Agents whose heartbeat expired are marked `lost`
 * (nats-server 2.9 has no per-key TTL, so expiry lives in the value). Unreadable entries are
 * skipped. `includeStopped` keeps agents that stopped cleanly. Throws a retryable
 * `UnavailableError` or `TimeoutError` when KV cannot be read within `timeoutMs`.
 */
export async function listAgents(
  runtime: Runtime,
  options: PresenceFilter & {
    /** Keep retrying a listing JetStream does not answer for this long (default 10 s). */
    timeoutMs?: number;
  } = {},
): Promise<AgentPresence[]> {
  const now = options.now ?? Date.now();
  // Listing keys makes an ephemeral consumer: while a cluster has lost a node it may time out
  // (see `retryTransport`). A listing is a read: try it again.
  const entries = await retryTransport(
    'agent presence listing',
    async () => {
      const kv = await runtime.agentsBucket();
      const keys = await bucketKeys(runtime.nc, Buckets.agents);
      return Promise.all(keys.map((k) => kv.get(k)));
    },
    { timeoutMs: options.timeoutMs ?? 10_000 },
  );
  const beats: Heartbeat[] = [];
  for (const e of entries) {
    if (!e || e.operation !== 'PUT') continue;
    const hb = decodePresence(e.value);
    if (hb) beats.push(hb);
  }
  return presenceOf(beats, { ...options, now });
}

/** Which agents a presence listing keeps (see `listAgents`). */
export interface PresenceFilter {
  /** The moment heartbeat expiry is judged at (default now). */
  now?: number;
  /** Keep agents that stopped cleanly. */
  includeStopped?: boolean;
  /** Keep agents whose heartbeat expired (default true). */
  includeLost?: boolean;
}

/**
 * The heartbeat a presence entry (KV `reins_agents`) holds, or undefined when it holds none
 * (an empty value, an unreadable one): such an entry is skipped, as `listAgents` does.
 */
export function decodePresence(value: Uint8Array): Heartbeat | undefined {
  if (value.length === 0) return undefined;
  try {
    return decode(Heartbeat, value, { name: 'heartbeat' });
  } catch {
    return undefined;
  }
}

/**
 * Agents as `listAgents` shows them, from heartbeats already read: `lost` once the heartbeat
 * expired (unless it said `stopped`), filtered by `filter`, sorted by role then agent id. Any
 * view of presence (a listing, a watch) answers with these rules.
 */
export function presenceOf(
  beats: Iterable<Heartbeat>,
  filter: PresenceFilter = {},
): AgentPresence[] {
  const now = filter.now ?? Date.now();
  const out: AgentPresence[] = [];
  for (const hb of beats) {
    const lost = hb.expiresAt < now && hb.status !== 'stopped';
    if (lost && filter.includeLost === false) continue;
    if (hb.status === 'stopped' && !filter.includeStopped) continue;
    out.push({ ...hb, status: lost ? 'lost' : hb.status, ageMs: now - hb.ts });
  }
  return out.sort((a, b) => a.role.localeCompare(b.role) || a.agentId.localeCompare(b.agentId));
}

/** Deletes presence entries of agents lost for longer than `olderThanMs`. Returns their ids. */
export async function purgeLostAgents(
  runtime: Runtime,
  olderThanMs: number,
  now = Date.now(),
): Promise<string[]> {
  const kv = await runtime.agentsBucket();
  const lost = (await listAgents(runtime, { now, includeStopped: true })).filter(
    (a) => (a.status === 'lost' || a.status === 'stopped') && now - a.ts > olderThanMs,
  );
  await Promise.all(lost.map((a) => kv.delete(a.agentId)));
  return lost.map((a) => a.agentId);
}
