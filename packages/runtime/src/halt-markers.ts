import type { KV } from '@nats-io/kv';
import { KvWatchInclude } from '@nats-io/kv';
import { HaltMarker, decode, encode, scopeKey, type Scope } from '@reins/protocol';
import type { Logger } from 'pino';
import { ScopeSet } from './scopes.js';

/**
 * Halt markers in KV `reins_halts`: state, not only messages. The supervisor writes them;
 * every runtime loads them on start and watches for changes, so a halt also holds for actors
 * that start later, and a resume (marker deleted) lifts it everywhere.
 */
export class HaltMarkers {
  readonly halted = new ScopeSet();
  readonly #kv: KV;
  readonly #logger: Logger;
  #stop: (() => void) | undefined;

  private constructor(kv: KV, logger: Logger) {
    this.#kv = kv;
    this.#logger = logger;
  }

  /** Loads every marker and starts watching. Throws when the bucket cannot be read (fail closed). */
  static async load(kv: KV, logger: Logger): Promise<HaltMarkers> {
    const markers = new HaltMarkers(kv, logger);
    const watch = await kv.watch({ include: KvWatchInclude.UpdatesOnly });
    markers.#stop = () => watch.stop();
    void (async () => {
      for await (const e of watch)
        markers.#apply(e.key, e.operation === 'PUT' ? e.value : undefined);
    })().catch((err: unknown) => logger.error({ err }, 'halt marker watch ended'));
    const keys = await kv.keys();
    const all: string[] = [];
    for await (const k of keys) all.push(k);
    for (const key of all) {
      const e = await kv.get(key);
      markers.#apply(key, e && e.operation === 'PUT' ? e.value : undefined);
    }
    return markers;
  }

  #apply(key: string, value: Uint8Array | undefined): void {
    if (value === undefined || value.length === 0) {
      this.halted.deleteKey(key);
      return;
    }
    try {
      const marker = decode(HaltMarker, value, { name: 'halt marker' });
      if (scopeKey(marker.scope) !== key) throw new Error('marker key does not match its scope');
      this.halted.add(marker.scope);
    } catch (err) {
      // A marker we cannot read still halts what its key names: fail closed.
      this.#logger.error({ err, key }, 'unreadable halt marker; treating its key as halted');
      const scope = scopeFromKey(key);
      if (scope) this.halted.add(scope);
    }
  }

  /** Writes a halt marker (supervisor side). */
  async write(marker: HaltMarker): Promise<void> {
    await this.#kv.put(scopeKey(marker.scope), encode(HaltMarker, marker));
    this.halted.add(marker.scope);
  }

  /** Clears a halt marker (resume). */
  async clear(scope: Scope): Promise<void> {
    await this.#kv.delete(scopeKey(scope));
    this.halted.delete(scope);
  }

  stop(): void {
    this.#stop?.();
  }
}

/** Parses a marker key back into a scope, or `undefined` when it is not one. */
export function scopeFromKey(key: string): Scope | undefined {
  if (key === 'all') return { kind: 'all' };
  const [kind, id, ...rest] = key.split('.');
  if (!id || rest.length) return undefined;
  if (kind === 'agent') return { kind, agentId: id };
  if (kind === 'run') return { kind, runId: id };
  if (kind === 'role') return { kind, role: id };
  return undefined;
}
