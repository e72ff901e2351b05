import { readFileSync, statSync } from 'node:fs';
import { createGrantSigner, grantSignerFromSeed, type GrantSigner } from '@reins/protocol';
import { NotFoundError, ProtocolError } from '@reins/protocol';

/** The subset of a pino logger the key loader uses. */
export interface WarnLogger {
  warn(obj: object, msg: string): void;
}

/** Where a signing key came from. */
export type SigningKeySource = 'seed' | 'seedFile' | 'env' | 'envFile' | 'dev';

/** Options of `loadSigningKey`; explicit options win over the environment. */
export interface LoadSigningKeyOptions {
  /** An nkey seed (`SA…`). */
  seed?: string;
  /** Path of a file holding the seed. */
  seedFile?: string;
  /** Environment to read (default `process.env`). */
  env?: Record<string, string | undefined>;
  /** Receives the dev-key and file-permission warnings. */
  logger?: WarnLogger;
  /**
   * Generate a throw-away key when none is configured (default: unless NODE_ENV is
   * `production`). When false, a missing key throws a `NotFoundError`.
   */
  allowDevKey?: boolean;
}

/** A loaded signing key. */
export interface LoadedSigningKey {
  signer: GrantSigner;
  source: SigningKeySource;
}

function readSeedFile(path: string, logger: WarnLogger | undefined): string {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (cause) {
    throw new NotFoundError(`supervisor seed file ${path} cannot be read`, {
      cause,
      details: { path },
    });
  }
  try {
    if ((statSync(path).mode & 0o077) !== 0) {
      logger?.warn({ path }, 'supervisor seed file is readable by group or others; chmod 600 it');
    }
  } catch {
    // The read worked; a failed stat only loses the warning.
  }
  return text.trim();
}

function fromSeed(seed: string, where: string): GrantSigner {
  try {
    return grantSignerFromSeed(seed);
  } catch (cause) {
    throw new ProtocolError(
      `invalid supervisor signing seed from ${where}: expected an nkey seed (S…)`,
      {
        cause,
      },
    );
  }
}

/**
 * Loads the supervisor's grant signing key: `seed`, then `seedFile`, then
 * `REINS_SUPERVISOR_SEED`, then `REINS_SUPERVISOR_SEED_FILE`. With none, generates a dev key
 * and warns loudly (executors will only trust it if told its public key); refuses instead when
 * `allowDevKey` is false. Throws `ProtocolError` for an invalid seed and `NotFoundError` for
 * an unreadable file.
 */
export function loadSigningKey(options: LoadSigningKeyOptions = {}): LoadedSigningKey {
  const env = options.env ?? process.env;
  const logger = options.logger;
  if (options.seed !== undefined)
    return { signer: fromSeed(options.seed, 'options'), source: 'seed' };
  if (options.seedFile !== undefined) {
    const seed = readSeedFile(options.seedFile, logger);
    return { signer: fromSeed(seed, options.seedFile), source: 'seedFile' };
  }
  const envSeed = env['REINS_SUPERVISOR_SEED'];
  if (envSeed) return { signer: fromSeed(envSeed, 'REINS_SUPERVISOR_SEED'), source: 'env' };
  const envFile = env['REINS_SUPERVISOR_SEED_FILE'];
  if (envFile) {
    const seed = readSeedFile(envFile, logger);
    return { signer: fromSeed(seed, envFile), source: 'envFile' };
  }
  const allowDev = options.allowDevKey ?? env['NODE_ENV'] !== 'production';
  if (!allowDev) {
    throw new NotFoundError(
      'no supervisor signing key: set REINS_SUPERVISOR_SEED or REINS_SUPERVISOR_SEED_FILE',
    );
  }
  const { signer } = createGrantSigner();
  logger?.warn(
    { publicKey: signer.publicKey, source: 'dev' },
    'NO SUPERVISOR SIGNING KEY CONFIGURED: using a throw-away dev key. Grants it signs are ' +
      'refused after a restart and by executors that do not trust this public key. Create a ' +
      'seed with `nk -gen account` (or createGrantSigner()), store it with chmod 600 and set ' +
      'REINS_SUPERVISOR_SEED_FILE=<path> (or REINS_SUPERVISOR_SEED), then give executors ' +
      'REINS_TRUSTED_ISSUERS=<public key>.',
  );
  return { signer, source: 'dev' };
}

const PUBLIC_ACCOUNT_KEY = /^A[A-Z2-7]{55}$/;

/**
 * Public keys of the supervisors whose grants an executor accepts, from
 * `REINS_TRUSTED_ISSUERS` (comma-separated). Empty or unset → `[]` (no grant is accepted:
 * fail closed). Throws a `ProtocolError` naming an entry that is not a public account nkey.
 */
export function trustedIssuersFromEnv(
  env: Record<string, string | undefined> = process.env,
): string[] {
  const raw = env['REINS_TRUSTED_ISSUERS'] ?? '';
  const keys = raw
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  for (const k of keys) {
    if (!PUBLIC_ACCOUNT_KEY.test(k)) {
      throw new ProtocolError(
        `REINS_TRUSTED_ISSUERS: ${JSON.stringify(k.slice(0, 80))} is not a public account nkey (A…, 56 chars)`,
      );
    }
  }
  return [...new Set(keys)];
}
