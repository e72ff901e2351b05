import { hostname, userInfo } from 'node:os';
import { connect, type ReinsClient } from '@reins/client';
import { createLogger } from '@reins/runtime';

/** Options every command takes. */
export interface CommonOptions {
  /** NATS URL; default `NATS_URL` or `nats://127.0.0.1:4222`. */
  nats?: string;
  /** Print machine-readable JSON instead of text. */
  json?: boolean;
  /** Who to act as in the audit log (`--as`); default `REINS_IDENTITY`, else the OS user. */
  as?: string;
}

/** The NATS URL a command uses: `--nats`, else `NATS_URL`, else the local default. */
export function natsUrl(options: CommonOptions): string {
  return options.nats ?? (process.env['NATS_URL'] || 'nats://127.0.0.1:4222');
}

/**
 * Who the CLI acts as in the audit log: `as` (`--as <name>`), else `REINS_IDENTITY`, else
 * `reins-cli:<user>@<host>`.
 */
export function cliIdentity(as?: string): string {
  const named = as?.trim() || process.env['REINS_IDENTITY']?.trim();
  if (named) return named.slice(0, 256);
  let user = 'unknown';
  try {
    user = userInfo().username;
  } catch {
    // Containers without a passwd entry: keep `unknown`.
  }
  return `reins-cli:${user}@${hostname()}`.slice(0, 256);
}

/**
 * Connects a client for one command. Runtime logs are silenced (stdout belongs to the
 * command's output; `--json` must stay parseable) unless `REINS_CLI_LOG_LEVEL` asks for them.
 * Throws `UnavailableError` when NATS cannot be reached.
 */
export async function openClient(options: CommonOptions): Promise<ReinsClient> {
  return connect({
    servers: natsUrl(options),
    name: 'reins-cli',
    identity: cliIdentity(options.as),
    logger: createLogger({ level: process.env['REINS_CLI_LOG_LEVEL'] ?? 'silent' }),
    connection: { timeout: 3000 },
  });
}
