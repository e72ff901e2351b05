import {
  connect,
  type ConnectionOptions,
  type Msg,
  type NatsConnection,
} from '@nats-io/transport-node';
import { jetstream, type JetStreamClient } from '@nats-io/jetstream';
import type { KV } from '@nats-io/kv';
import {
  AbortedError,
  Buckets,
  DEFAULT_MAX_PAYLOAD_BYTES,
  Heartbeat,
  TimeoutError,
  checkHeartbeat,
  decode,
  UnavailableError,
  createSubjects,
  DEFAULT_PARTITIONS,
  ProtocolError,
  ReinsError,
  assertPartitions,
  encode,
  type Subjects,
} from '@reins/protocol';
import type { z } from 'zod';
import { Actor, type ActorDefinition } from './actor.js';
import { HaltMarkers } from './halt-markers.js';
import { ensureInfrastructure, openBucket, type TraceRetention } from './infrastructure.js';
import { createLogger, type Logger } from './logger.js';
import { mapTransportError } from './transport-errors.js';
import { decodeReply, payloadHeaders } from './wire.js';
import { BoundedMap } from './bounded-map.js';
import { DEFAULT_REPLY_PREFIXES, checkReplyPrefixes } from './reply-guard.js';
import { servingConnection, nkeyConnection } from './secure-mode.js';

/** Options of `Runtime.connect`. */
export interface RuntimeOptions {
  /** NATS server URL(s). Default `NATS_URL` or `nats://127.0.0.1:4222`. */
  servers?: string | string[];
  /** Subject prefix (default `reins.v1`, or `REINS_PREFIX`). */
  prefix?: string;
  /**
   * How many partitions run-scoped control requests are spread over (default 32, or
   * `REINS_PARTITIONS`). Every process of a deployment must use the same number.
   */
  partitions?: number;
  /** Connection name shown by the server. */
  name?: string;
  logger?: Logger;
  /** Largest payload accepted or sent (default 1 MiB). */
  maxPayloadBytes?: number;
  /**
   * Extra NATS connection options (credentials, TLS…); they override the runtime's defaults
   * (`noAsyncTraces: true`, reconnect forever…).
   */
  connection?: Partial<ConnectionOptions>;
  /**
   * Secure mode: this role's nkey seed (`SU…`). The runtime then connects twice: as the role's
   * user for its own writes, requests and traces, and as the role's serving user (derived from
   * the same seed, see `createSecureConfig`) for the requests it serves. The serving user may
   * publish only to its callers' inboxes, so no request can make it write anything else.
   */
  nkeySeed?: string;
  /**
   * Public keys of the supervisors this process trusts (their grant signing keys, as in
   * `REINS_TRUSTED_ISSUERS`). With them, the dead-man switch counts only heartbeats those
   * supervisors signed; without them, any well-formed supervisor heartbeat. Executors add the
   * keys they verify grants with (`trustSupervisors`).
   */
  trustedSupervisors?: readonly string[];
  /**
   * Reply subject prefixes this runtime answers (default `['_INBOX.']`): a request whose reply
   * subject lies elsewhere is refused before its handler runs, logged and reported as a
   * security event (see `onSecurityEvent`). Add a prefix only for a custom `inboxPrefix`.
   */
  replyPrefixes?: readonly string[];
  /**
   * Create the Reins streams and buckets when missing (default true). Turn it off where the
   * actor's NATS user may not manage JetStream (secure mode); the supervisor creates them.
   */
  ensureInfrastructure?: boolean;
  traceRetention?: TraceRetention;
  /** Heartbeat interval of every actor on this runtime (default 2 s). */
  heartbeatMs?: number;
  /**
   * Dead-man switch: actors that declare `requireSupervisor` take no work when no supervisor
   * heartbeat was heard for this long (default 10 s; fail closed). `REINS_DEADMAN_MS` overrides.
   * Keep it several supervisor heartbeat intervals long (2 s by default), or a live supervisor
   * looks lost between two heartbeats.
   */
  supervisorDeadManMs?: number;
  /**
   * After a halt, work that still runs past the halt deadline plus this long makes the process
   * exit (code 70): a tool that ignores its abort signal must not keep acting (default 10 s;
   * 0 turns the watchdog off). `REINS_HALT_WATCHDOG_MS` overrides.
   */
  haltWatchdogMs?: number;
  /**
   * Also trace work as it starts (`model.call` before a model call, `tool.start` when an
   * executor begins a tool), not only as it ends (default false, or `REINS_TRACE_IN_FLIGHT=1`).
   * The end events carry what the start events would (grant, estimate, takeover, timeout); the
   * start events show work in flight live, at one more stored trace message each.
   */
  traceInFlight?: boolean;
}

/** Options of `Runtime.request`. */
export interface RequestOptions {
  /** Give up after this many milliseconds (default 5 s): `TimeoutError`. */
  timeoutMs?: number;
  /** Abort the wait: `AbortedError`. */
  signal?: AbortSignal;
  /**
   * A run-scoped control request (`<prefix>.sv.<n>.…`) that finds no supervisor owning its
   * partition (none yet, or the owner just changed: `no responders`, or `partitionMoved`) is
   * sent again, with backoff, for up to this long (default 15 s: a partition's takeover takes
   * at most its lease, 5 s by default). Such a request reached no one, or was refused before
   * it took effect, so sending it again is safe. 0 turns it off.
   */
  ownerWaitMs?: number;
}

/** Something a hostile or broken peer tried that the runtime refused. */
export type SecurityEvent =
  | {
      kind: 'reply_refused';
      /** The subject the request came in on. */
      subject: string;
      /** The refused reply subject (truncated to 256 characters). */
      reply: string;
      /** Its first three tokens: events are reported once per subject and family. */
      family: string;
      role: string;
      agentId: string;
    }
  | {
      kind: 'heartbeat_refused';
      /** The heartbeat subject (`…hb.supervisor.<id>`). */
      subject: string;
      /** Why it does not count: `malformed`, `unsigned`, `untrusted_issuer`, `bad_signature`… */
      family: string;
    };

/**
 * One NATS connection shared by every actor in a process (two in secure mode: see `nkeySeed`).
 * It owns the subject builder, the logger, the halt markers and the heartbeat timer; `start()`
 * runs actors on it. Dispose it (`await using`) to stop its actors and drain the connection.
 */
export class Runtime implements AsyncDisposable {
  /** The connection for this process's own writes, requests, traces and subscriptions. */
  readonly nc: NatsConnection;
  /**
   * The connection handlers and control messages are served on; its replies go only to
   * inboxes. The same as `nc` unless the runtime was given an `nkeySeed`.
   */
  readonly serving: NatsConnection;
  /** Reply subject prefixes this runtime answers (see `RuntimeOptions.replyPrefixes`). */
  readonly replyPrefixes: readonly string[];
  readonly js: JetStreamClient;
  readonly subjects: Subjects;
  readonly logger: Logger;
  readonly maxPayloadBytes: number;
  readonly heartbeatMs: number;
  readonly actors = new Set<Actor>();
  /** Connections now down (reconnecting): the runtime counts as connected when none is. */
  readonly #down = new Set<NatsConnection>();
  readonly supervisorDeadManMs: number;
  readonly haltWatchdogMs: number;
  /** Subjects of run-scoped control requests start with this (see `RequestOptions.ownerWaitMs`). */
  readonly #partitionPrefix: string;
  /** Whether actors trace work as it starts too (see `RuntimeOptions.traceInFlight`). */
  readonly traceInFlight: boolean;
  #supervisorSeenAt = Date.now();
  readonly #trustedSupervisors = new Set<string>();
  /** Last accepted heartbeat (time and seq) per supervisor: the same beat twice is a replay. */
  readonly #supervisorBeats = new BoundedMap<string, string>(256);
  #supervisorWatch: { unsubscribe(): void } | undefined;
  #halts: Promise<HaltMarkers> | undefined;
  #agents: Promise<KV> | undefined;
  #closed = false;
  /** Resolved on the next reconnect (or close): see `whenConnected`. */
  #reconnected: { promise: Promise<void>; resolve: () => void } | undefined;
  /** Fails each request waiting for a reply, when the connection drops (see `request`). */
  readonly #awaitingReply = new Set<() => void>();
  /** Codec options of every request and publish (one object, not one per message). */
  readonly #limits: { maxPayloadBytes: number };
  readonly #securityListeners = new Set<(event: SecurityEvent) => void>();
  /** Security events already reported, by subject and family: each is reported once. */
  readonly #reported = new BoundedMap<string, true>(1000);

  private constructor(
    nc: NatsConnection,
    serving: NatsConnection,
    options: RuntimeOptions,
    logger: Logger,
  ) {
    this.nc = nc;
    this.serving = serving;
    this.replyPrefixes = checkReplyPrefixes(options.replyPrefixes ?? DEFAULT_REPLY_PREFIXES);
    this.js = jetstream(nc, { timeout: 5000 });
    this.subjects = createSubjects(
      options.prefix ?? process.env['REINS_PREFIX'] ?? undefined,
      partitionsSetting(options.partitions),
    );
    this.#partitionPrefix = `${this.subjects.prefix}.sv.`;
    this.logger = logger;
    this.maxPayloadBytes = options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES;
    this.#limits = { maxPayloadBytes: this.maxPayloadBytes };
    this.heartbeatMs = options.heartbeatMs ?? 2000;
    this.supervisorDeadManMs = options.supervisorDeadManMs ?? envMs('REINS_DEADMAN_MS') ?? 10_000;
    this.haltWatchdogMs = options.haltWatchdogMs ?? envMs('REINS_HALT_WATCHDOG_MS') ?? 10_000;
    this.traceInFlight = options.traceInFlight ?? process.env['REINS_TRACE_IN_FLIGHT'] === '1';
    this.trustSupervisors(options.trustedSupervisors ?? []);
    void this.#watchStatus(nc);
    if (serving !== nc) void this.#watchStatus(serving);
  }

  /**
   * Connects to NATS (reconnecting forever after the first success) and prepares the
   * infrastructure. Throws `UnavailableError` when NATS cannot be reached: fail closed.
   */
  static async connect(options: RuntimeOptions = {}): Promise<Runtime> {
    // Checked before connecting: a bad setting is an error, not a connection left open.
    options = { ...options, partitions: partitionsSetting(options.partitions) };
    const logger = options.logger ?? createLogger();
    const given = options.servers ?? process.env['NATS_URL'] ?? 'nats://127.0.0.1:4222';
    // `NATS_URL` may list a cluster: `nats://a:4222,nats://b:4222`.
    const servers =
      typeof given === 'string'
        ? given
            .split(',')
            .map((s) => s.trim())
            .filter(Boolean)
        : given;
    const base: Partial<ConnectionOptions> = {
      servers,
      name: options.name ?? 'reins',
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      pingInterval: 10_000,
      // Async traces capture a stack per request (an Error each time) only to improve the
      // stack of a failed request; on the hot path that costs more than the request itself.
      noAsyncTraces: true,
      ...options.connection,
    };
    const open = async (extra: Partial<ConnectionOptions>) => {
      try {
        return await connect({ ...base, ...extra });
      } catch (cause) {
        throw new UnavailableError(
          `cannot connect to NATS at ${String(servers)}: is nats-server running? (set NATS_URL)`,
          { cause },
        );
      }
    };
    const seed = options.nkeySeed;
    const nc = await open(seed ? nkeyConnection(seed) : {});
    let serving = nc;
    if (seed) {
      try {
        serving = await open({
          ...servingConnection(seed),
          name: `${options.name ?? 'reins'} (serving)`,
        });
      } catch (err) {
        await nc.close();
        // The role's own user got in: the server knows the seed but not its serving user.
        throw new UnavailableError(
          'NATS accepted this seed but refused its serving user: the server config predates serving users (regenerate it with `reins keys init --keep-existing`, or createSecureConfig)',
          { cause: err, retryable: false },
        );
      }
    }
    const runtime = new Runtime(nc, serving, options, logger);
    if (options.ensureInfrastructure ?? true) {
      try {
        // A fresh cluster may still be electing its JetStream leaders: retry with backoff.
        for (let attempt = 0; ; attempt++) {
          try {
            await ensureInfrastructure(nc, runtime.subjects, options.traceRetention);
            break;
          } catch (err) {
            if (attempt >= 4) throw err;
            await new Promise((r) => setTimeout(r, 250 * 2 ** attempt));
          }
        }
      } catch (cause) {
        await runtime.#closeConnections();
        throw new UnavailableError(
          'cannot create Reins streams and buckets: is JetStream enabled (nats-server -js)?',
          {
            cause,
          },
        );
      }
    }
    return runtime;
  }

  /**
   * True when a supervisor heartbeat was heard within `supervisorDeadManMs` (the grace period
   * starts when the first actor that needs a supervisor starts watching).
   */
  get supervisorAlive(): boolean {
    this.watchSupervisors();
    return Date.now() - this.#supervisorSeenAt <= this.supervisorDeadManMs;
  }

  /** Starts listening to supervisor heartbeats (idempotent); the dead-man grace starts now. */
  watchSupervisors(): void {
    if (this.#supervisorWatch || this.nc.isClosed()) return;
    this.#supervisorSeenAt = Date.now();
    const sub = this.nc.subscribe(this.subjects.heartbeat('supervisor', '*'), {
      callback: (err, msg) => {
        if (!err) this.#onSupervisorHeartbeat(msg);
      },
    });
    this.#supervisorWatch = sub;
  }

  /**
   * Trusts these supervisor keys from now on: the dead-man switch then counts only heartbeats
   * signed by a trusted key. Throws a `RangeError` on a key that is not a public nkey.
   */
  trustSupervisors(publicKeys: readonly string[]): void {
    for (const k of publicKeys) {
      if (!/^[A-Z2-7]{56}$/.test(k)) throw new RangeError(`not a public nkey: ${k.slice(0, 80)}`);
      this.#trustedSupervisors.add(k);
    }
  }

  /** A supervisor heartbeat lifts the dead-man switch only if it is one (see `trustSupervisors`). */
  #onSupervisorHeartbeat(msg: Msg): void {
    const refuse = (family: string) =>
      this.reportSecurityEvent({ kind: 'heartbeat_refused', subject: msg.subject, family });
    let hb: Heartbeat;
    try {
      hb = decode(Heartbeat, msg.data, { name: 'heartbeat', maxPayloadBytes: 64 * 1024 });
    } catch {
      return refuse('malformed');
    }
    if (hb.role !== 'supervisor' || !msg.subject.endsWith(`.${hb.agentId}`)) {
      return refuse('misattributed');
    }
    const now = Date.now();
    if (this.#trustedSupervisors.size > 0) {
      // Dated within the dead-man window, give or take machines' clock skew (heartbeats carry
      // the supervisor's clock): an old recording does not keep the switch off.
      const check = checkHeartbeat(hb, {
        trustedIssuers: [...this.#trustedSupervisors],
        now,
        maxAgeMs: this.supervisorDeadManMs + CLOCK_SKEW_MS,
      });
      if (check !== 'ok') return refuse(check);
      // The same beat again (a replay) does not count; a newer one, or a restarted supervisor's
      // whose clock stepped back, does.
      const beat = `${hb.ts}:${hb.seq ?? 0}`;
      if (this.#supervisorBeats.get(hb.agentId) === beat) return refuse('replayed');
      this.#supervisorBeats.set(hb.agentId, beat);
    }
    this.#supervisorSeenAt = now;
  }

  /** False while the connection to NATS is down (actors report it as degraded). */
  get connected(): boolean {
    return this.#down.size === 0 && !this.nc.isClosed() && !this.serving.isClosed();
  }

  /**
   * Resolves at once while connected, else on the next reconnect (or when the connection is
   * closed). Messages published while disconnected are lost (not buffered): JetStream acks and
   * naks wait for this.
   */
  whenConnected(): Promise<void> {
    if (this.connected || this.nc.isClosed()) return Promise.resolve();
    if (!this.#reconnected) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.#reconnected = { promise, resolve };
      void this.nc.closed().then(() => resolve());
    }
    return this.#reconnected.promise;
  }

  async #watchStatus(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') {
        this.#down.add(nc);
        this.logger.warn(
          { server: s.server, serving: nc !== this.nc },
          'NATS disconnected; reconnecting',
        );
        // A reply on its way now is lost (the server is gone or no longer routes to us): fail
        // the requests waiting for one at once instead of at their timeout. Requests travel on
        // `nc`, so only its loss fails them.
        if (nc === this.nc) for (const fail of [...this.#awaitingReply]) fail();
      } else if (s.type === 'reconnect') {
        this.#down.delete(nc);
        this.logger.info({ server: s.server, serving: nc !== this.nc }, 'NATS reconnected');
        // Acks and naks wait for every connection to be back (see `whenConnected`).
        if (this.#down.size === 0) {
          this.#reconnected?.resolve();
          this.#reconnected = undefined;
        }
      }
    }
  }

  /** Halt markers, loaded once per runtime and kept current by a KV watch. */
  halts(): Promise<HaltMarkers> {
    this.#halts ??= openBucket(this.nc, Buckets.halts).then((kv) =>
      HaltMarkers.load(kv, this.logger),
    );
    this.#halts.catch(() => (this.#halts = undefined));
    return this.#halts;
  }

  /** The presence bucket (`reins_agents`). */
  agentsBucket(): Promise<KV> {
    this.#agents ??= openBucket(this.nc, Buckets.agents);
    this.#agents.catch(() => (this.#agents = undefined));
    return this.#agents;
  }

  /** Starts an actor on this runtime; resolves once it is running (or throws, fail closed). */
  async start(definition: ActorDefinition): Promise<Actor> {
    if (this.#closed) throw new UnavailableError('runtime is closed');
    const actor = new Actor(this, definition);
    this.actors.add(actor);
    try {
      await actor.start();
    } catch (err) {
      this.actors.delete(actor);
      throw err;
    }
    return actor;
  }

  /**
   * A typed request: validates and encodes `payload` with `requestSchema`, waits for the reply
   * and decodes it with `responseSchema`. A remote error is rethrown as its class
   * (`BudgetExceededError`…); no responder is `UnavailableError`; no answer in time `TimeoutError`
   * — also at once when the connection to NATS drops while the reply is awaited (a reply sent
   * meanwhile is lost; retry with the same idempotency key rather than wait for the timeout).
   */
  async request<Req extends z.ZodType, Res extends z.ZodType>(
    subject: string,
    requestSchema: Req,
    responseSchema: Res,
    payload: z.input<Req>,
    options: RequestOptions = {},
  ): Promise<z.output<Res>> {
    const data = encode(requestSchema, payload, this.#limits);
    const waitMs = subject.startsWith(this.#partitionPrefix) ? (options.ownerWaitMs ?? 15_000) : 0;
    const until = Date.now() + waitMs;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.#requestOnce(subject, data, requestSchema, responseSchema, options);
      } catch (err) {
        const noOwner =
          err instanceof ReinsError &&
          err.code === 'UNAVAILABLE' &&
          (err.details?.['noResponders'] === true || err.details?.['partitionMoved'] !== undefined);
        const pause = Math.min(250, 50 * 2 ** attempt);
        if (!noOwner || options.signal?.aborted || Date.now() + pause > until) throw err;
        await new Promise((r) => setTimeout(r, pause));
      }
    }
  }

  async #requestOnce<Req extends z.ZodType, Res extends z.ZodType>(
    subject: string,
    data: Uint8Array,
    requestSchema: Req,
    responseSchema: Res,
    options: RequestOptions,
  ): Promise<z.output<Res>> {
    const signal = options.signal;
    if (signal?.aborted)
      throw new AbortedError('request aborted before it was sent', { cause: signal.reason });
    const sent = this.nc.request(subject, data, {
      timeout: options.timeoutMs ?? 5000,
      headers: payloadHeaders(requestSchema),
    });
    const pending = new Promise<Msg>((resolve, reject) => {
      const lost = () => {
        this.#awaitingReply.delete(lost);
        reject(
          new TimeoutError(
            `connection to NATS lost while waiting for a reply on ${subject}; the request may or may not have been handled`,
            { details: { subject, reason: 'disconnected' } },
          ),
        );
      };
      this.#awaitingReply.add(lost);
      sent.then(
        (m) => {
          this.#awaitingReply.delete(lost);
          resolve(m);
        },
        (err: Error) => {
          this.#awaitingReply.delete(lost);
          reject(err);
        },
      );
    });
    let msg;
    try {
      if (signal) {
        let onAbort: (() => void) | undefined;
        const aborted = new Promise<never>((_, reject) => {
          onAbort = () => reject(new AbortedError('request aborted', { cause: signal.reason }));
          signal.addEventListener('abort', onAbort, { once: true });
        });
        pending.catch(() => undefined);
        try {
          msg = await Promise.race([pending, aborted]);
        } finally {
          if (onAbort) signal.removeEventListener('abort', onAbort);
        }
      } else {
        msg = await pending;
      }
    } catch (err) {
      throw mapTransportError(err, subject);
    }
    return decodeReply(msg, responseSchema, this.#limits);
  }

  /** Publishes a typed message without waiting (fire-and-forget). Invalid payloads throw. */
  publish<S extends z.ZodType>(
    subject: string,
    schema: S,
    payload: z.input<S>,
    options: { reply?: string } = {},
  ): void {
    const data = encode(schema, payload, this.#limits);
    this.nc.publish(subject, data, {
      headers: payloadHeaders(schema),
      ...(options.reply ? { reply: options.reply } : {}),
    });
  }

  /**
   * Stops every actor (finishing or aborting their work within `deadlineMs`) and drains the
   * connection. Returns how many units of work were abandoned.
   */
  async close(deadlineMs = 5000): Promise<{ abandoned: number }> {
    if (this.#closed) return { abandoned: 0 };
    this.#closed = true;
    const results = await Promise.all([...this.actors].map((a) => a.stop({ deadlineMs })));
    const halts = await this.#halts?.catch(() => undefined);
    halts?.stop();
    await this.#closeConnections();
    return { abandoned: results.reduce((n, r) => n + r.abandoned, 0) };
  }

  async #closeConnections(): Promise<void> {
    const conns = this.serving === this.nc ? [this.nc] : [this.serving, this.nc];
    for (const nc of conns) {
      try {
        await nc.drain();
      } catch {
        await nc.close().catch(() => undefined);
      }
    }
  }

  /**
   * Calls `listener` with each security event (a refused reply subject…), once per kind of
   * attempt. The supervisor audits them. Returns a function that removes the listener.
   */
  onSecurityEvent(listener: (event: SecurityEvent) => void): () => void {
    this.#securityListeners.add(listener);
    return () => this.#securityListeners.delete(listener);
  }

  /** @internal Logs and reports a refused attempt, once per subject and reply family. */
  reportSecurityEvent(event: SecurityEvent): void {
    const key = `${event.kind}|${event.subject}|${event.family}`;
    if (this.#reported.has(key)) return;
    this.#reported.set(key, true);
    this.logger.warn(
      event,
      event.kind === 'reply_refused'
        ? 'SECURITY: request with a reply subject outside the inboxes refused'
        : 'SECURITY: supervisor heartbeat not counted',
    );
    for (const l of this.#securityListeners) {
      try {
        l(event);
      } catch (err) {
        this.logger.error({ err }, 'security event listener failed');
      }
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close().then(() => undefined);
  }
}

/** Clock skew between machines tolerated in the dates of signed supervisor heartbeats. */
const CLOCK_SKEW_MS = 30_000;

/** The partition count: the option, else `REINS_PARTITIONS`, else 32; a bad one throws. */
function partitionsSetting(option: number | undefined): number {
  const env = process.env['REINS_PARTITIONS'];
  const value = option ?? (env === undefined || env === '' ? DEFAULT_PARTITIONS : Number(env));
  try {
    return assertPartitions(value);
  } catch (err) {
    const from = option === undefined ? `REINS_PARTITIONS=${JSON.stringify(env)}` : 'partitions';
    throw new ProtocolError(
      `${from}: ${(err as Error).message} (every process of a deployment must use the same number)`,
      { details: { field: 'partitions' } },
    );
  }
}

function envMs(name: string): number | undefined {
  const v = process.env[name];
  if (v === undefined || v === '') return undefined;
  const n = Number(v);
  return Number.isFinite(n) && n >= 0 ? n : undefined;
}
