export { Runtime } from './runtime.js';
export type { RuntimeOptions, RequestOptions, SecurityEvent } from './runtime.js';
export { Actor, defineActor, RUNTIME_VERSION } from './actor.js';
export type { ActorDefinition, WorkContext, HandlerContext, HandleOptions } from './actor.js';
export { createLogger } from './logger.js';
export type { Logger } from './logger.js';
export { subscribeTraces } from './trace-subscriber.js';
export type { TraceStart, SubscribeTracesOptions, TraceSubscription } from './trace-subscriber.js';
export { RunRecords, isRunEnded } from './run-records.js';
export type { WaitForEndOptions } from './run-records.js';
export { decodePresence, listAgents, presenceOf, purgeLostAgents } from './presence.js';
export type { AgentPresence, PresenceFilter } from './presence.js';
export { handleSignals } from './shutdown.js';
export type { ShutdownOptions } from './shutdown.js';
export { HaltMarkers, scopeFromKey } from './halt-markers.js';
export { scopeMatches, ScopeSet } from './scopes.js';
export type { ScopeTarget } from './scopes.js';
export {
  defaultReplicas,
  ensureInfrastructure,
  ensureTraceStream,
  ensureTaskStream,
  isCasConflict,
  openBucket,
  bucketKeys,
} from './infrastructure.js';
export type { TraceRetention } from './infrastructure.js';
export { mapTransportError } from './transport-errors.js';
export { retryTransport } from './transport-retry.js';
export type { RetryTransportOptions } from './transport-retry.js';
export { decodeReply, errorPayload, payloadHeaders, isErrorReply } from './wire.js';
export { broadcastControl } from './control.js';
export type { BroadcastOptions } from './control.js';
export { parseEnv } from './env-config.js';
export {
  SECURE_ROLES,
  SERVING_ROLES,
  createSecureConfig,
  securePermissions,
  servingPermissions,
  nkeyConnection,
  servingConnection,
  servingSeedOf,
  loadNkeySeed,
  inboxPrefixOf,
  syncAlwaysConfig,
} from './secure-mode.js';
export type {
  SecureRole,
  ServingRole,
  SecureConfigOptions,
  SecureUser,
  SecureConfig,
  SubjectPermissions,
} from './secure-mode.js';
export { CommaList, INSECURE_WARNING, ServiceEnv, runService } from './service.js';
export { ServerClock, type ServerClockOptions } from './server-clock.js';
export { BoundedMap } from './bounded-map.js';
export { DEFAULT_REPLY_PREFIXES, isAllowedReply } from './reply-guard.js';
