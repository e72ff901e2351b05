import type { ReinsClient } from '@reins/client';
import { usageError } from './errors.js';

/** What an id names, for messages and the prefix ids of that kind carry. */
const KINDS = {
  run: { label: 'run', prefix: 'run_', list: 'reins runs' },
  approval: { label: 'approval', prefix: 'ap_', list: 'reins approvals' },
  agent: { label: 'agent', prefix: '', list: 'reins ps' },
} as const;
export type IdKind = keyof typeof KINDS;

/**
 * The one id among `known` that `given` names: itself when it is one, else the only id starting
 * with it (`run_7f3a` or just `7f3a` for `run_7f3a9c…`), as docker and git take prefixes. More
 * than one is a usage error listing them; none returns `given` unchanged, so the command reports
 * it as unknown the way it always has.
 */
export function matchIdPrefix(kind: IdKind, given: string, known: readonly string[]): string {
  if (known.includes(given)) return given;
  const { label, prefix, list } = KINDS[kind];
  const full = prefix && !given.startsWith(prefix) ? `${prefix}${given}` : given;
  const matches = [...new Set(known.filter((id) => id.startsWith(full)))];
  if (matches.length === 1) return matches[0] ?? given;
  if (matches.length > 1) {
    const shown = matches.slice(0, 5).join(', ') + (matches.length > 5 ? ', …' : '');
    throw usageError(
      `${label} id prefix ${given} is ambiguous: ${matches.length} ${label}s start with it (${shown})`,
      `give more characters; \`${list}${kind === 'agent' ? '' : ' --wide'}\` shows whole ids`,
    );
  }
  return given;
}

/** The ids a prefix is matched against: the newest 1000 runs or approvals, or the agents. */
async function knownIds(client: ReinsClient, kind: IdKind): Promise<string[]> {
  switch (kind) {
    case 'run':
      return (await client.runs.list({ limit: 1000 })).map((r) => r.runId);
    case 'approval':
      return (await client.approvals.list({ limit: 1000 })).map((a) => a.approvalId);
    case 'agent':
      return (await client.agents.list({ includeStopped: true })).map((a) => a.agentId);
  }
}

/** `matchIdPrefix` against what the swarm knows; the id as given when it cannot be listed. */
export async function resolveId(client: ReinsClient, kind: IdKind, given: string): Promise<string> {
  const known = await knownIds(client, kind).catch(() => undefined);
  return known ? matchIdPrefix(kind, given, known) : given;
}

/**
 * Short forms of ids for a table: for each, the shortest prefix no other id of `ids` shares, but
 * at least the kind's prefix and `min` characters after it (`run_mxdmymq4`), as docker shows
 * 12 characters of an image id.
 */
export function shortIds(ids: readonly string[], kind: IdKind, min = 8): Map<string, string> {
  const head = KINDS[kind].prefix.length;
  const out = new Map<string, string>();
  for (const id of ids) {
    let n = Math.min(id.length, head + min);
    while (n < id.length && ids.some((o) => o !== id && o.startsWith(id.slice(0, n)))) n++;
    out.set(id, id.slice(0, n));
  }
  return out;
}
