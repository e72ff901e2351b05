import { readFile } from 'node:fs/promises';
import { nkeyAuthenticator, nkeys, type ConnectionOptions } from '@nats-io/transport-node';
import {
  Buckets,
  DEFAULT_PREFIX,
  ProtocolError,
  Streams,
  assertId,
  createSubjects,
  deriveUserSeed,
} from '@reins/protocol';

/** The NATS users of a secure deployment: one per role. */
export const SECURE_ROLES = ['supervisor', 'planner', 'executor', 'client'] as const;
/** A role that gets its own NATS user in secure mode. */
export type SecureRole = (typeof SECURE_ROLES)[number];
/**
 * Roles whose processes serve requests. Each gets a second, serving user (derived from the
 * role's seed): handlers and control acks are served on it, and it may publish only to the
 * callers' inboxes, so no reply subject can make a service write state (docs/secure-mode.md).
 */
export const SERVING_ROLES = ['supervisor', 'planner', 'executor'] as const;
/** A role with a serving user. */
export type ServingRole = (typeof SERVING_ROLES)[number];

/** Options of `createSecureConfig`. */
export interface SecureConfigOptions {
  /** Subject prefix the deployment uses (default `reins.v1`). */
  prefix?: string;
  /**
   * Actor roles served by the planner and executor users. With them, a planner may only publish
   * tasks, traces and heartbeats of its own roles and only consume its own roles' task queues;
   * without them, any role but `supervisor`, `client` and the executor roles. Executors default
   * to the one role `executor`. Planner and executor roles may not overlap.
   */
  roles?: { planner?: string[]; executor?: string[] };
  /** Seeds to keep (key rotation of some roles only); the others are generated. */
  seeds?: Partial<Record<SecureRole, string>>;
  /**
   * Map connections without credentials to a user that may neither publish nor subscribe
   * (default false: they are refused). Lets readiness probes connect; nothing else.
   */
  anonymousProbe?: boolean;
}

/** One role's nkey user. Keep `seed` secret; `publicKey` goes into the server config. */
export interface SecureUser {
  role: SecureRole;
  /** The nkey seed (`SU…`): the credential the role's processes connect with. */
  seed: string;
  /** The nkey public key (`U…`). */
  publicKey: string;
}

/** Publish and subscribe allow/deny lists of one user, as nats-server reads them. */
export interface SubjectPermissions {
  publish: { allow: string[]; deny: string[] };
  subscribe: { allow: string[]; deny: string[] };
}

/** What `createSecureConfig` returns. */
export interface SecureConfig {
  users: Record<SecureRole, SecureUser>;
  permissions: Record<SecureRole, SubjectPermissions>;
  /** The serving users, derived from the role seeds (`servingSeedOf`). */
  serving: Record<ServingRole, SecureUser>;
  servingPermissions: Record<ServingRole, SubjectPermissions>;
  /** nats-server configuration text: an `authorization` block (append it to your server config). */
  serverConfig: string;
}

/**
 * The inbox prefix of a user: replies and consumer deliveries to it land under
 * `_INBOX.<publicKey>.`, and each user may subscribe only to its own, so no role can read
 * another role's replies (grants travel in replies).
 */
export function inboxPrefixOf(publicKey: string): string {
  return `_INBOX.${publicKey}`;
}

/**
 * The serving user's seed of a role's seed: derived, so a role keeps one secret. Throws a
 * `ProtocolError` when `seed` is not a user seed.
 */
export function servingSeedOf(seed: string): string {
  parseSeed(seed);
  return deriveUserSeed(seed, 'serving');
}

/**
 * Connection options of a role's serving user (see `SERVING_ROLES`), for the connection its
 * handlers are served on. `Runtime.connect({ nkeySeed })` opens it for you.
 */
export function servingConnection(seed: string): Partial<ConnectionOptions> {
  return nkeyConnection(servingSeedOf(seed));
}

function userFromSeed(role: SecureRole, seed: string): SecureUser {
  const kp = parseSeed(seed);
  return { role, seed, publicKey: kp.getPublicKey() };
}

function parseSeed(seed: string): nkeys.KeyPair {
  const text = seed.trim();
  let kp: nkeys.KeyPair;
  try {
    kp = nkeys.fromSeed(new TextEncoder().encode(text));
  } catch (cause) {
    throw new ProtocolError('invalid nkey seed: expected a user seed (SU…)', { cause });
  }
  if (!kp.getPublicKey().startsWith('U')) {
    throw new ProtocolError('invalid nkey seed: expected a user seed (SU…), not another key type');
  }
  return kp;
}

/** Subjects of the JetStream API (`$JS.API.…`) a user may call on one stream without changing it. */
function streamRead(stream: string): string[] {
  const api = '$JS.API';
  return [
    `${api}.STREAM.INFO.${stream}`,
    `${api}.STREAM.MSG.GET.${stream}`,
    `${api}.DIRECT.GET.${stream}`,
    `${api}.DIRECT.GET.${stream}.>`,
    // Ephemeral (ordered) consumers: KV keys(), watch() and trace subscriptions.
    `${api}.CONSUMER.CREATE.${stream}`,
    `${api}.CONSUMER.CREATE.${stream}.>`,
    `${api}.CONSUMER.INFO.${stream}.*`,
    `${api}.CONSUMER.MSG.NEXT.${stream}.*`,
  ];
}

const kvStream = (bucket: string) => `KV_${bucket}`;
const kvRead = (bucket: string) => streamRead(kvStream(bucket));
const kvWrite = (bucket: string, keys = '>') => `$KV.${bucket}.${keys}`;

/** JetStream administration that nobody but the supervisor may do. */
function jsAdmin(): string[] {
  const api = '$JS.API';
  return [
    `${api}.STREAM.CREATE.>`,
    `${api}.STREAM.UPDATE.>`,
    `${api}.STREAM.DELETE.>`,
    `${api}.STREAM.PURGE.>`,
    `${api}.STREAM.MSG.DELETE.>`,
    `${api}.STREAM.SNAPSHOT.>`,
    `${api}.STREAM.RESTORE.>`,
    `${api}.STREAM.PEER.>`,
    `${api}.STREAM.LEADER.>`,
    `${api}.META.>`,
    `${api}.ACCOUNT.>`,
    `${api}.SERVER.>`,
  ];
}

/** Roles no planner or executor may take: their traces and heartbeats would pass as ours. */
const RESERVED_ROLES = ['supervisor', 'client'];

function roleList(list: string[] | undefined, what: string, fallback: string[]): string[] {
  if (!list || list.length === 0) return fallback;
  const roles = [...new Set(list.map((r) => assertId(r, what)))];
  const reserved = roles.filter((r) => RESERVED_ROLES.includes(r));
  if (reserved.length) throw new ProtocolError(`${what} may not be ${reserved.join(', ')}`);
  return roles;
}

/** The actor roles of the planner and executor users (see `SecureConfigOptions.roles`). */
function actorRoles(options: Pick<SecureConfigOptions, 'roles'>) {
  const executor = roleList(options.roles?.executor, 'executor role', ['executor']);
  const planner = roleList(options.roles?.planner, 'planner role', ['*']);
  const overlap = planner.filter((r) => executor.includes(r));
  if (overlap.length) {
    throw new ProtocolError(`roles served by both planners and executors: ${overlap.join(', ')}`);
  }
  return { planner, executor };
}

/** Least-privilege subject permissions of every role; see `docs/secure-mode.md`. */
export function securePermissions(
  options: Pick<SecureConfigOptions, 'prefix' | 'roles'> = {},
  inboxes: Record<SecureRole, string> = {
    supervisor: '_INBOX',
    planner: '_INBOX',
    executor: '_INBOX',
    client: '_INBOX',
  },
): Record<SecureRole, SubjectPermissions> {
  const s = createSubjects(options.prefix ?? DEFAULT_PREFIX);
  const p = s.prefix;
  const { planner: plannerRoles, executor: executorRoles } = actorRoles(options);
  const api = '$JS.API';
  const inbox = (role: SecureRole) => `${inboxes[role]}.>`;
  // A planner allowed any role (`*`) still may not speak as the supervisor, a client or an
  // executor: heartbeats and traces are attributed by their subject.
  const notPlannerRoles = [...RESERVED_ROLES, ...executorRoles];
  const plannerImpersonation = plannerRoles.includes('*')
    ? notPlannerRoles.flatMap((r) => [`${p}.hb.${r}.*`, `${p}.trace.*.${r}.>`, `${p}.task.${r}`])
    : [];

  // Never for anyone but the supervisor: control, execution forwarding, audit, ledger, halts,
  // approvals, and JetStream administration.
  const controlPlane = [
    `${p}.ctl.>`,
    `${p}.exec.>`,
    `${p}.audit.>`,
    `${p}.approvals.>`,
    kvWrite(Buckets.budget),
    kvWrite(Buckets.budgetGrants),
    kvWrite(Buckets.halts),
    kvWrite(Buckets.approvals),
    kvWrite(Buckets.auditAnchors),
    kvWrite(Buckets.partitions),
    `${api}.CONSUMER.DELETE.>`,
    `${api}.CONSUMER.DURABLE.CREATE.>`,
    ...jsAdmin(),
  ];
  const presence = [kvWrite(Buckets.agents), ...kvRead(Buckets.agents)];
  const actorCommon = [`${api}.INFO`, ...presence, ...kvRead(Buckets.halts)];
  const actorSubscribe = (role: SecureRole) => [
    inbox(role),
    s.ctlBcastAll,
    s.heartbeat('supervisor', '*'),
  ];

  const supervisor: SubjectPermissions = {
    publish: {
      allow: [
        `${p}.>`,
        `${api}.>`,
        '$JS.ACK.>',
        '$JS.FC.>',
        ...Object.values(Buckets).map((b) => kvWrite(b)),
      ],
      deny: [],
    },
    subscribe: { allow: [`${p}.>`, inbox('supervisor')], deny: [] },
  };

  const planner: SubjectPermissions = {
    publish: {
      allow: [
        s.runsStart,
        s.runsGet,
        s.runsEnd,
        s.runsList,
        s.runsBudget,
        s.partition('*').authorize,
        s.partition('*').settle,
        s.partition('*').act,
        ...plannerRoles.map((r) => `${p}.task.${r}`),
        ...plannerRoles.map((r) => `${p}.trace.*.${r}.>`),
        ...plannerRoles.map((r) => `${p}.hb.${r}.*`),
        kvWrite(Buckets.runs, 'state.>'),
        ...kvRead(Buckets.runs),
        ...actorCommon,
        // The role's durable task consumer: create it (or adjust its ack wait), read, ack.
        ...plannerRoles.flatMap((r) => {
          const durable = r === '*' ? '*' : `planner-${r}`;
          return [
            // Only with its own role's filter: a planner cannot point its durable at other tasks.
            `${api}.CONSUMER.CREATE.${Streams.tasks}.${durable}.${p}.task.${r}`,
            `${api}.CONSUMER.INFO.${Streams.tasks}.${durable}`,
            `${api}.CONSUMER.MSG.NEXT.${Streams.tasks}.${durable}`,
            `$JS.ACK.${Streams.tasks}.${durable}.>`,
          ];
        }),
        `${api}.STREAM.INFO.${Streams.tasks}`,
      ],
      deny: [...controlPlane, ...plannerImpersonation],
    },
    subscribe: { allow: actorSubscribe('planner'), deny: [] },
  };

  const executor: SubjectPermissions = {
    publish: {
      allow: [
        s.partition('*').settle,
        ...executorRoles.map((r) => `${p}.trace.*.${r}.>`),
        ...executorRoles.map((r) => `${p}.hb.${r}.*`),
        kvWrite(Buckets.idem),
        ...kvRead(Buckets.idem),
        ...actorCommon,
      ],
      deny: [
        ...controlPlane,
        s.partition('*').authorize,
        s.partition('*').act,
        `${p}.runs.>`,
        kvWrite(Buckets.runs),
      ],
    },
    subscribe: { allow: actorSubscribe('executor'), deny: [] },
  };

  const client: SubjectPermissions = {
    publish: {
      allow: [
        `${p}.runs.>`,
        s.ctlHalt,
        s.ctlResume,
        s.ctlPause,
        s.ctlApprove,
        s.approvalsList,
        `${api}.INFO`,
        ...streamRead(Streams.trace),
        ...kvRead(Buckets.agents),
        ...kvRead(Buckets.runs),
      ],
      deny: [
        `${p}.ctl.bcast.>`,
        `${p}.sv.>`,
        `${p}.exec.>`,
        `${p}.task.>`,
        `${p}.trace.>`,
        `${p}.audit.>`,
        '$KV.>',
        ...jsAdmin(),
      ],
    },
    subscribe: {
      allow: [inbox('client'), `${p}.approvals.>`, `${p}.hb.>`],
      deny: [],
    },
  };

  return { supervisor, planner, executor, client };
}

/**
 * Permissions of the serving users: subscribe to the requests the role serves, publish only to
 * the inboxes of the users that send them. No allow_responses: a reply subject outside those
 * inboxes is refused by the server even if an actor tried to answer there.
 */
export function servingPermissions(
  options: Pick<SecureConfigOptions, 'prefix'>,
  inboxes: Record<SecureRole, string>,
  servingInboxes: Record<ServingRole, string>,
): Record<ServingRole, SubjectPermissions> {
  const s = createSubjects(options.prefix ?? DEFAULT_PREFIX);
  const p = s.prefix;
  const inbox = (role: SecureRole) => `${inboxes[role]}.>`;
  const own = (role: ServingRole) => `${servingInboxes[role]}.>`;
  return {
    supervisor: {
      publish: { allow: SECURE_ROLES.map(inbox), deny: [] },
      subscribe: { allow: [`${p}.>`, own('supervisor')], deny: [] },
    },
    // Planners serve control broadcasts only: their acks go to the supervisor.
    planner: {
      publish: { allow: [inbox('supervisor')], deny: [] },
      subscribe: { allow: [s.ctlBcastAll, own('planner')], deny: [] },
    },
    // Executors answer the planner whose call the supervisor forwarded, and ack controls.
    executor: {
      publish: { allow: [inbox('planner'), inbox('supervisor')], deny: [] },
      subscribe: { allow: [`${p}.exec.>`, s.ctlBcastAll, own('executor')], deny: [] },
    },
  };
}

/**
 * Generates one nkey user per role (or reuses `options.seeds`) and the nats-server
 * `authorization` block that gives each the least privilege it needs. Throws a `ProtocolError`
 * on a bad prefix, role name or seed.
 *
 * ```ts
 * const { users, serverConfig } = createSecureConfig({ roles: { planner: ['researcher'] } });
 * ```
 */
export function createSecureConfig(options: SecureConfigOptions = {}): SecureConfig {
  const users = Object.fromEntries(
    SECURE_ROLES.map((role) => {
      const given = options.seeds?.[role];
      const seed = given ?? new TextDecoder().decode(nkeys.createUser().getSeed());
      return [role, userFromSeed(role, seed)];
    }),
  ) as Record<SecureRole, SecureUser>;
  const inboxes = Object.fromEntries(
    SECURE_ROLES.map((role) => [role, inboxPrefixOf(users[role].publicKey)]),
  ) as Record<SecureRole, string>;
  const permissions = securePermissions(options, inboxes);
  const serving = Object.fromEntries(
    SERVING_ROLES.map((role) => [role, userFromSeed(role, servingSeedOf(users[role].seed))]),
  ) as Record<ServingRole, SecureUser>;
  const servingInboxes = Object.fromEntries(
    SERVING_ROLES.map((role) => [role, inboxPrefixOf(serving[role].publicKey)]),
  ) as Record<ServingRole, string>;
  const servingPerms = servingPermissions(options, inboxes, servingInboxes);
  return {
    users,
    permissions,
    serving,
    servingPermissions: servingPerms,
    serverConfig: renderServerConfig(
      [
        ...SECURE_ROLES.map((role) => ({
          label: role,
          user: users[role],
          permissions: permissions[role],
        })),
        ...SERVING_ROLES.map((role) => ({
          label: `${role} (serving: answers requests, may publish only to callers' inboxes)`,
          user: serving[role],
          permissions: servingPerms[role],
        })),
      ],
      options,
    ),
  };
}

const q = (s: string) => JSON.stringify(s);
const list = (xs: string[]) => `[${xs.map(q).join(', ')}]`;

function renderServerConfig(
  entries: { label: string; user: SecureUser; permissions: SubjectPermissions }[],
  options: SecureConfigOptions,
): string {
  const lines: string[] = [
    `# Reins secure mode: one nkey user per role (prefix ${options.prefix ?? DEFAULT_PREFIX}).`,
    '# Generated by createSecureConfig; see docs/secure-mode.md.',
    'authorization {',
    '  users: [',
  ];
  for (const { label, user, permissions: perm } of entries) {
    const block = (name: 'publish' | 'subscribe') => {
      const { allow, deny } = perm[name];
      const parts = [`allow: ${list(allow)}`];
      if (deny.length) parts.push(`deny: ${list(deny)}`);
      return `        ${name}: { ${parts.join(', ')} }`;
    };
    // No allow_responses: it would let a user publish to any reply subject it received, even
    // a denied one (`$KV.…`). Replies are explicit inbox allows of the serving users.
    lines.push(
      `    # ${label}`,
      '    {',
      `      nkey: ${q(user.publicKey)}`,
      '      permissions: {',
      block('publish'),
      block('subscribe'),
      '      }',
      '    }',
    );
  }
  if (options.anonymousProbe) {
    lines.push(
      '    # connections without credentials: may connect, nothing else',
      '    { user: "reins_probe", password: ' + q(randomPassword()) + ',',
      '      permissions: { publish: { deny: [">"] }, subscribe: { deny: [">"] } } }',
    );
  }
  lines.push('  ]', '}');
  if (options.anonymousProbe) lines.push('no_auth_user: "reins_probe"');
  return lines.join('\n') + '\n';
}

function randomPassword(): string {
  return Buffer.from(crypto.getRandomValues(new Uint8Array(24))).toString('base64url');
}

/**
 * Connection options that authenticate with an nkey seed, for `Runtime.connect({ connection })`.
 * Replies go to the user's own inbox prefix, the only one its permissions let it read. Throws a
 * `ProtocolError` when the seed is not a user seed.
 */
export function nkeyConnection(seed: string): Partial<ConnectionOptions> {
  const kp = parseSeed(seed);
  const bytes = new TextEncoder().encode(seed.trim());
  return { authenticator: nkeyAuthenticator(bytes), inboxPrefix: inboxPrefixOf(kp.getPublicKey()) };
}

/**
 * Reads an nkey seed from a value or a file (services: `REINS_NKEY_SEED`,
 * `REINS_NKEY_SEED_FILE`). Returns undefined when neither is set; throws a `ProtocolError` when
 * both are, or when the seed is not a user seed.
 */
export async function loadNkeySeed(source: {
  seed?: string | undefined;
  file?: string | undefined;
}): Promise<string | undefined> {
  if (source.seed && source.file) {
    throw new ProtocolError('set REINS_NKEY_SEED or REINS_NKEY_SEED_FILE, not both');
  }
  let seed = source.seed;
  if (source.file) {
    try {
      seed = await readFile(source.file, 'utf8');
    } catch (cause) {
      throw new ProtocolError(`cannot read nkey seed file ${source.file}`, { cause });
    }
  }
  if (seed === undefined) return undefined;
  seed = seed.trim();
  parseSeed(seed);
  return seed;
}

/**
 * The JetStream setting that makes nats-server flush every write to disk before acknowledging
 * it (so an acknowledged ledger commit or audit entry survives a machine crash, not only a
 * server crash), or undefined when this nats-server is older than 2.10 and rejects the field.
 */
export function syncAlwaysConfig(version: string | undefined): string | undefined {
  const [major = 0, minor = 0] = (version ?? '').split('.').map(Number);
  return major > 2 || (major === 2 && minor >= 10)
    ? 'jetstream { sync_interval: always }\n'
    : undefined;
}
