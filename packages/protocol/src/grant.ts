import { createAccount, fromSeed, type KeyPair } from '@nats-io/nkeys';
import { canonicalJson } from './canonical.js';
import type { HeartbeatBytes } from './heartbeat-proof.js';
import { GrantInvalidError, ProtocolError } from './errors.js';
import { Grant, GrantBody } from './messages.js';
import { parse } from './codec.js';
import { nativePrivateKey, nativePublicKey, signEd25519, verifyEd25519 } from './ed25519.js';

const encoder = new TextEncoder();

/** A supervisor signing key (ed25519 nkey). Keep the seed secret. */
export interface GrantSigner {
  /** Public key: executors trust grants whose `issuer` is this. */
  readonly publicKey: string;
  sign(body: GrantBody): Grant;
  /** Signs a supervisor heartbeat's identity and time; see `heartbeatBytes`. */
  signHeartbeatBytes(bytes: HeartbeatBytes): string;
  /** Signs an audit chain head (a batch's last entry, or an anchor); see `auditHeadBytes`. */
  signAuditHead(head: AuditHead): { signer: string; sig: string };
}

/** The position of an audit chain that a supervisor signs: writer, seq and hash of an entry. */
export interface AuditHead {
  writer: string;
  seq: number;
  hash: string;
}

/**
 * The bytes signed for an audit head: canonical JSON with a type tag, so a signed head can
 * never be taken for a grant (a grant body has no `type`) or the other way round.
 */
export function auditHeadBytes(head: AuditHead): Uint8Array {
  return encoder.encode(
    canonicalJson({
      type: 'reins.audit.head.v1',
      writer: head.writer,
      seq: head.seq,
      hash: head.hash,
    }),
  );
}

/**
 * True when `sig` (base64url) is `signer`'s ed25519 signature of `head`. Never throws: a
 * malformed key or signature is just false.
 */
export function verifyAuditHead(head: AuditHead, signer: string, sig: string): boolean {
  if (!/^[A-Z2-7]{56}$/.test(signer)) return false;
  try {
    return verifyEd25519(
      nativePublicKey(signer),
      auditHeadBytes(head),
      Buffer.from(sig, 'base64url'),
    );
  } catch {
    return false;
  }
}

/**
 * A signer from an nkey seed (`SA…`). Throws a `ProtocolError` when the seed is not a valid
 * nkey seed, so a misconfigured supervisor fails at start, not at its first grant.
 */
export function grantSignerFromSeed(seed: string): GrantSigner {
  let kp: KeyPair;
  try {
    kp = fromSeed(encoder.encode(seed.trim()));
  } catch (cause) {
    throw new ProtocolError('invalid grant signing seed: expected an nkey seed (S…)', { cause });
  }
  return signerFor(kp);
}

/** A new random signer; also returns its seed so it can be stored. */
export function createGrantSigner(): { signer: GrantSigner; seed: string } {
  const kp = createAccount();
  return { signer: signerFor(kp), seed: new TextDecoder().decode(kp.getSeed()) };
}

function signerFor(kp: KeyPair): GrantSigner {
  const publicKey = kp.getPublicKey();
  const privateKey = nativePrivateKey(new TextDecoder().decode(kp.getSeed()), publicKey);
  return {
    publicKey,
    sign(body) {
      const checked = parse(GrantBody, { ...body, issuer: publicKey }, 'grant');
      const sig = Buffer.from(
        signEd25519(privateKey, encoder.encode(canonicalJson(checked))),
      ).toString('base64url');
      return { ...checked, sig };
    },
    signHeartbeatBytes(bytes) {
      return Buffer.from(signEd25519(privateKey, bytes)).toString('base64url');
    },
    signAuditHead(head) {
      const sig = Buffer.from(signEd25519(privateKey, auditHeadBytes(head))).toString('base64url');
      return { signer: publicKey, sig };
    },
  };
}

/** What a grant must match to be accepted. Fields left out are not checked. */
export interface VerifyGrantOptions {
  /** Public keys of supervisors whose grants are accepted. Empty means none is. */
  trustedIssuers: readonly string[];
  /** Clock for expiry checks (default `Date.now()`). */
  now?: number;
  /** Tolerated clock skew in milliseconds for `issuedAt` (default 5 s). */
  clockSkewMs?: number;
  expect?: Partial<
    Pick<GrantBody, 'runId' | 'agentId' | 'kind' | 'tool' | 'argsHash' | 'idempotencyKey'>
  >;
  /** Returns true when a grant id has been revoked (fencing). */
  isRevoked?: (grantId: string) => boolean;
}

/**
 * Verifies a grant: well-formed, signed by a trusted issuer, not expired, not revoked, and for
 * the expected run, agent, tool, arguments and idempotency key. Returns the grant; throws a
 * `GrantInvalidError` with `details.reason` otherwise. Never accepts on doubt.
 */
export function verifyGrant(grant: unknown, options: VerifyGrantOptions): Grant {
  let g: Grant;
  try {
    g = parse(Grant, grant, 'grant');
  } catch (cause) {
    throw new GrantInvalidError('grant is missing or malformed', {
      cause,
      details: { reason: 'malformed' },
    });
  }
  const fail = (reason: string, message: string): never => {
    throw new GrantInvalidError(message, { details: { reason, grantId: g.grantId } });
  };
  if (!options.trustedIssuers.includes(g.issuer))
    fail('untrusted_issuer', 'grant issuer is not trusted');
  const { sig, ...body } = g;
  let ok: boolean;
  try {
    ok = verifyEd25519(
      nativePublicKey(g.issuer),
      encoder.encode(canonicalJson(body)),
      Buffer.from(sig, 'base64url'),
    );
  } catch {
    ok = false;
  }
  if (!ok) fail('bad_signature', 'grant signature does not verify (forged or altered)');
  const now = options.now ?? Date.now();
  if (g.expiresAt <= now) fail('expired', 'grant has expired');
  if (g.issuedAt > now + (options.clockSkewMs ?? 5_000))
    fail('not_yet_valid', 'grant is issued in the future');
  if (options.isRevoked?.(g.grantId)) fail('revoked', 'grant has been revoked');
  for (const [key, want] of Object.entries(options.expect ?? {})) {
    if (want !== undefined && g[key as keyof GrantBody] !== want) {
      fail(`mismatch_${key}`, `grant is for another ${key}`);
    }
  }
  return g;
}
