import { existsSync, statSync } from 'node:fs';
import { relative } from 'node:path';
import { hostname, userInfo } from 'node:os';
import { connect, type ReinsClient } from '@reins/client';
import { createLogger, loadNkeySeed, nkeyConnection } from '@reins/runtime';
import { CliError, ExitCode } from './errors.js';
import { projectKeyDir, seedFile } from './key-dir.js';

/** Options every command takes. */
export interface CommonOptions {
  /** NATS URL; default `NATS_URL` or `nats://127.0.0.1:4222`. */
  nats?: string;
  /** Print machine-readable JSON instead of text. */
  json?: boolean;
  /** Who to act as in the audit log (`--as`); default `REINS_IDENTITY`, else the OS user. */
  as?: string;
  /**
   * File holding the nkey seed to connect with (`--nkey-file`, secure mode); default
   * `REINS_NKEY_SEED_FILE`, else `REINS_NKEY_SEED`, else the project's client seed
   * (`projectKeyDir()/client.nk`, made by `reins up`), else no credentials.
   */
  nkeyFile?: string;
}

/** The nkey seed a command connects with, and where it came from (never printed). */
export interface CliCredentials {
  seed: string;
  /** `--nkey-file <path>`, `REINS_NKEY_SEED_FILE=<path>`, `REINS_NKEY_SEED` or `the project's keys (<path>)`. */
  source: string;
  /** The seed file, when it came from one. */
  file: string | undefined;
}

/**
 * The credentials of a command, the way services find theirs: `--nkey-file`, else
 * `REINS_NKEY_SEED_FILE` or `REINS_NKEY_SEED` (not both), else the client seed of the project's
 * key directory (`projectKeyDir`: what `reins up` made). Undefined when there is none. A missing
 * or unreadable file, a value that is not a user seed (`SU…`) or both variables set is a
 * configuration error (exit 2). A seed file that group or others may read gets a warning on
 * stderr.
 */
export async function loadCredentials(options: CommonOptions): Promise<CliCredentials | undefined> {
  const flag = options.nkeyFile;
  const envFile = process.env['REINS_NKEY_SEED_FILE'] || undefined;
  const envSeed = process.env['REINS_NKEY_SEED'] || undefined;
  // An explicit flag wins over the environment (a shell may export the client seed).
  // Secure by default: without an explicit seed, the keys `reins up` made for this project.
  const projectSeed =
    flag === undefined && envFile === undefined && envSeed === undefined
      ? seedFile(projectKeyDir(), 'client')
      : undefined;
  const found = projectSeed !== undefined && existsSync(projectSeed) ? projectSeed : undefined;
  const file = flag ?? envFile ?? found;
  const source =
    flag !== undefined
      ? `--nkey-file ${flag}`
      : envFile !== undefined
        ? `REINS_NKEY_SEED_FILE=${envFile}`
        : found !== undefined
          ? `the project's keys (${shownPath(found)})`
          : 'REINS_NKEY_SEED';
  let seed: string | undefined;
  try {
    seed = await loadNkeySeed(flag !== undefined ? { file: flag } : { seed: envSeed, file });
  } catch (cause) {
    throw new CliError(`cannot use the nkey seed of ${source}: ${(cause as Error).message}`, {
      exitCode: ExitCode.usage,
      code: 'BAD_CREDENTIALS',
      cause,
      hint: 'point it at a user seed file (SU…) made by `reins keys init`, e.g. .reins/secure/client.nk',
    });
  }
  if (seed === undefined) return undefined;
  if (file !== undefined) warnIfReadableByOthers(file);
  return { seed, source, file };
}

/** A path relative to the working directory when it is below it. */
function shownPath(path: string): string {
  const rel = relative(process.cwd(), path);
  return rel && !rel.startsWith('..') ? rel : path;
}

/** Seeds are credentials: say so when a seed file is readable beyond its owner. */
function warnIfReadableByOthers(file: string): void {
  try {
    const mode = statSync(file).mode & 0o777;
    if (mode & 0o077) {
      process.stderr.write(
        `reins: warning: nkey seed file ${file} is readable by group or others (mode ${mode.toString(8)}); run chmod 600 ${file}\n`,
      );
    }
  } catch {
    // It was just read; a race with its removal is not worth a warning.
  }
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
 * Connects a client for one command, with the nkey of `loadCredentials` when one is set
 * (secure mode). Runtime logs are silenced (stdout belongs to the command's output; `--json`
 * must stay parseable) unless `REINS_CLI_LOG_LEVEL` asks for them. Throws `UnavailableError`
 * when NATS cannot be reached or refuses the credentials, a `CliError` (exit 2) on bad ones.
 */
export async function openClient(options: CommonOptions): Promise<ReinsClient> {
  return connectClient(options, await loadCredentials(options));
}

/** `openClient` with credentials already loaded (`loadCredentials`), or none. */
export async function connectClient(
  options: CommonOptions,
  credentials: CliCredentials | undefined,
): Promise<ReinsClient> {
  return connect({
    servers: natsUrl(options),
    name: 'reins-cli',
    identity: cliIdentity(options.as),
    logger: createLogger({ level: process.env['REINS_CLI_LOG_LEVEL'] ?? 'silent' }),
    connection: {
      timeout: 3000,
      ...(credentials ? nkeyConnection(credentials.seed) : {}),
    },
  });
}
