import { canonicalJson } from './canonical.js';
import { nativePublicKey, verifyEd25519 } from './ed25519.js';
import type { GrantSigner } from './grant.js';
import type { Heartbeat } from './messages.js';

const encoder = new TextEncoder();

/** The bytes a heartbeat proof signs (branded: a signer signs nothing else this way). */
export type HeartbeatBytes = Uint8Array & { readonly __heartbeat: true };

/**
 * What a heartbeat proof signs: who, which beat and when (so an old beat cannot be replayed),
 * with a type tag, so the signature can never pass for a grant's or an audit head's.
 */
function signedPart(hb: Pick<Heartbeat, 'agentId' | 'role' | 'seq' | 'ts'>): HeartbeatBytes {
  return encoder.encode(
    canonicalJson({
      type: 'reins.heartbeat.v1',
      agentId: hb.agentId,
      role: hb.role,
      seq: hb.seq ?? 0,
      ts: hb.ts,
    }),
  ) as HeartbeatBytes;
}

/** The heartbeat with a proof by `signer` (a supervisor's grant signing key). */
export function signHeartbeat(signer: GrantSigner, hb: Heartbeat): Heartbeat {
  return {
    ...hb,
    proof: { issuer: signer.publicKey, sig: signer.signHeartbeatBytes(signedPart(hb)) },
  };
}

/** Why a heartbeat is not accepted as a supervisor's, or `ok`. */
export type HeartbeatCheck =
  'ok' | 'unsigned' | 'untrusted_issuer' | 'bad_signature' | 'stale' | 'from_the_future';

/**
 * Checks a supervisor heartbeat against trusted supervisor keys: signed by one of them, and
 * dated within `maxAgeMs` of `now` (either way, so a recorded beat cannot be replayed later).
 * Never throws.
 */
export function checkHeartbeat(
  hb: Heartbeat,
  options: { trustedIssuers: readonly string[]; now: number; maxAgeMs: number },
): HeartbeatCheck {
  if (!hb.proof) return 'unsigned';
  if (!options.trustedIssuers.includes(hb.proof.issuer)) return 'untrusted_issuer';
  let ok: boolean;
  try {
    ok = verifyEd25519(
      nativePublicKey(hb.proof.issuer),
      signedPart(hb),
      Buffer.from(hb.proof.sig, 'base64url'),
    );
  } catch {
    ok = false;
  }
  if (!ok) return 'bad_signature';
  if (hb.ts < options.now - options.maxAgeMs) return 'stale';
  if (hb.ts > options.now + options.maxAgeMs) return 'from_the_future';
  return 'ok';
}
