import { scopeKey, type Scope } from '@reins/protocol';

/** What an actor or a unit of work is, for matching control scopes. */
export interface ScopeTarget {
  agentId: string;
  role: string;
  runId?: string | undefined;
}

/** True when `scope` covers the target (`all`, its agent id, its role, or its run). */
export function scopeMatches(scope: Scope, target: ScopeTarget): boolean {
  switch (scope.kind) {
    case 'all':
      return true;
    case 'agent':
      return scope.agentId === target.agentId;
    case 'role':
      return scope.role === target.role;
    case 'run':
      return target.runId !== undefined && scope.runId === target.runId;
  }
}

/** A set of scopes (halted or paused), keyed by their KV key. */
export class ScopeSet {
  readonly #scopes = new Map<string, Scope>();

  add(scope: Scope): void {
    this.#scopes.set(scopeKey(scope), scope);
  }
  delete(scope: Scope): boolean {
    return this.#scopes.delete(scopeKey(scope));
  }
  deleteKey(key: string): boolean {
    return this.#scopes.delete(key);
  }
  /** The first scope that covers the target, if any. */
  find(target: ScopeTarget): Scope | undefined {
    // Checked for every request; almost always empty.
    if (this.#scopes.size === 0) return undefined;
    for (const s of this.#scopes.values()) if (scopeMatches(s, target)) return s;
    return undefined;
  }
  get size(): number {
    return this.#scopes.size;
  }
}
