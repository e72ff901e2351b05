/**
 * Where the runtime sends replies. A request names its reply subject, and whoever answers
 * publishes there with its own credentials: a reply subject such as `$KV.reins_halts.all` or
 * `reins.v1.audit.<writer>` would make the answering actor write a halt marker or an audit
 * entry for the caller (a confused deputy). Replies therefore go only to inbox subjects, where
 * nothing but a waiting requester listens; any other reply subject is refused before the
 * handler runs. In secure mode the server enforces the same rule (docs/secure-mode.md).
 */

/** Reply subject prefixes answered by default: the NATS inbox space. */
export const DEFAULT_REPLY_PREFIXES: readonly string[] = ['_INBOX.'];

/**
 * What a refused reply subject looks like in logs and security events: its first three tokens
 * (`$KV.reins_halts.all`, `reins.v1.audit`), so each kind of attempt is reported once.
 */
export function replyFamily(reply: string): string {
  return reply.split('.').slice(0, 3).join('.');
}

/**
 * True when `reply` lies inside one of `prefixes` (each ending in `.`) and is a plain subject
 * (no wildcard, no white space, no empty token). Never throws.
 */
export function isAllowedReply(reply: string, prefixes: readonly string[]): boolean {
  if (reply.length === 0 || reply.length > 512) return false;
  if (!/^[^\s*>]+$/.test(reply) || reply.includes('..') || reply.endsWith('.')) return false;
  return prefixes.some((p) => reply.startsWith(p) && reply.length > p.length);
}

/**
 * Checks the prefixes a runtime is configured with: each must be a literal subject prefix
 * ending in `.`, and none may open a protected subject space. Throws a `RangeError` otherwise.
 */
export function checkReplyPrefixes(prefixes: readonly string[]): readonly string[] {
  if (prefixes.length === 0) throw new RangeError('replyPrefixes: give at least one inbox prefix');
  for (const p of prefixes) {
    if (!/^[^\s*>]+\.$/.test(p)) {
      throw new RangeError(
        `replyPrefixes: ${JSON.stringify(p)} must be a literal prefix ending in "."`,
      );
    }
    if (p.startsWith('$')) {
      throw new RangeError(`replyPrefixes: ${JSON.stringify(p)} opens a system subject space`);
    }
  }
  return prefixes;
}
