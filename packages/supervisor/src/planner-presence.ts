import { TimeoutError } from '@reins/protocol';
import { listAgents, type AgentPresence } from '@reins/runtime';
import { PresenceView } from './presence-view.js';

/** How `PlannerPresence` lists the agents in presence (KV `reins_agents`). */
export type ListLiveAgents = () => Promise<AgentPresence[]>;

/** What `PlannerPresence.check` answers. */
export interface PlannerCheck {
  served: boolean;
  /** Roles a live agent serves (supervisors left out), sorted; filled in only on a miss. */
  roles: string[];
}

/** A presence listing that takes longer fails the starts waiting on it (retryable). */
const LIST_DEADLINE_MS = 10_000;

/** Agent statuses that take no more work: they do not serve their role. */
const GONE = new Set(['stopped', 'failed', 'lost']);

/**
 * Which roles a live agent serves, for admission (`runs.start` refuses a role nobody serves:
 * `NO_PLANNER`). Cheap on the hot path: a role seen served is trusted until the newest
 * heartbeat of its agents expires (three heartbeat intervals), with no KV read; a role not
 * (or no longer) known is looked up with one presence listing, shared by the starts that
 * miss at the same time. Supervisors are never counted: they take no tasks.
 *
 * An agent that stops cleanly keeps its role served until that expiry (a few seconds): a run
 * started then is queued for the next planner, as before this check. A listing that fails
 * throws (`UnavailableError` / `TimeoutError`, retryable): admission fails closed.
 */
export class PlannerPresence {
  readonly #list: ListLiveAgents;
  /** role → until when (server-agnostic ms, the agents' own expiry) it counts as served. */
  readonly #servedUntil = new Map<string, number>();
  #listing: Promise<string[]> | undefined;

  constructor(list: ListLiveAgents) {
    this.#list = list;
  }

  /**
   * Over `runtime`'s agents bucket (a listing per miss), or over a `PresenceView` (from memory
   * once its watch caught up with the bucket).
   */
  static of(source: Parameters<typeof listAgents>[0] | PresenceView): PlannerPresence {
    if (source instanceof PresenceView)
      return new PlannerPresence(() =>
        source.agents({ includeLost: false, includeStopped: false }),
      );
    return new PlannerPresence(() =>
      listAgents(source, { includeLost: false, includeStopped: false, timeoutMs: 5_000 }),
    );
  }

  /** True when `role` is served, by the cached view or, on a miss, a fresh listing. */
  async check(role: string, now = Date.now()): Promise<PlannerCheck> {
    if ((this.#servedUntil.get(role) ?? 0) > now) return { served: true, roles: [] };
    const roles = await this.#refresh();
    return { served: roles.includes(role), roles };
  }

  #refresh(): Promise<string[]> {
    this.#listing ??= this.#bounded()
      .then((agents) => {
        this.#servedUntil.clear();
        for (const ag of agents) {
          if (ag.role === 'supervisor' || GONE.has(ag.status)) continue;
          const until = Math.max(this.#servedUntil.get(ag.role) ?? 0, ag.expiresAt);
          this.#servedUntil.set(ag.role, until);
        }
        return [...this.#servedUntil.keys()].sort();
      })
      .finally(() => {
        this.#listing = undefined;
      });
    return this.#listing;
  }

  /**
   * The listing, given up after `LIST_DEADLINE_MS`: every start that misses waits on the one
   * listing in flight, so a listing that never answers must not hold admission for good.
   */
  #bounded(): Promise<AgentPresence[]> {
    let timer: NodeJS.Timeout | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new TimeoutError('agent presence listing did not answer in time')),
        LIST_DEADLINE_MS,
      );
    });
    return Promise.race([this.#list(), deadline]).finally(() => clearTimeout(timer));
  }
}
