import { describe, expect, it } from 'vitest';
import {
  GrantInvalidError,
  createGrantSigner,
  grantSignerFromSeed,
  hashArgs,
  verifyGrant,
  ProtocolError,
  canonicalJson,
  type GrantBody,
} from '@reins/protocol';

const { signer, seed } = createGrantSigner();
const now = Date.now();
const body: GrantBody = {
  grantId: 'g1',
  runId: 'run1',
  agentId: 'p1',
  role: 'planner',
  kind: 'tool',
  tool: 'write_file',
  argsHash: hashArgs({ path: 'a.txt', text: 'hi' }),
  idempotencyKey: 'run1:s1:write_file',
  reserved: { inputTokens: 0, outputTokens: 0, usd: 0, steps: 1 },
  issuedAt: now,
  expiresAt: now + 60_000,
  issuer: signer.publicKey,
};
const trusted = [signer.publicKey];

function reason(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(GrantInvalidError);
    return (err as GrantInvalidError).details?.['reason'];
  }
  throw new Error('expected GrantInvalidError');
}

describe('grants', () => {
  it('verifies a grant signed by a trusted issuer', () => {
    const g = signer.sign(body);
    expect(
      verifyGrant(g, {
        trustedIssuers: trusted,
        expect: { runId: 'run1', tool: 'write_file', argsHash: body.argsHash },
      }),
    ).toEqual(g);
  });

  it('the same seed gives the same signer', () => {
    expect(grantSignerFromSeed(seed).publicKey).toBe(signer.publicKey);
    expect(() => grantSignerFromSeed('not a seed')).toThrow(ProtocolError);
  });

  it('refuses forged, altered, expired, untrusted, revoked and mismatched grants', () => {
    const g = signer.sign(body);
    const other = createGrantSigner().signer;
    expect(reason(() => verifyGrant(undefined, { trustedIssuers: trusted }))).toBe('malformed');
    expect(
      reason(() => verifyGrant({ ...g, tool: 'delete_all' }, { trustedIssuers: trusted })),
    ).toBe('bad_signature');
    expect(
      reason(() =>
        verifyGrant({ ...other.sign(body), issuer: signer.publicKey }, { trustedIssuers: trusted }),
      ),
    ).toBe('bad_signature');
    expect(reason(() => verifyGrant(other.sign(body), { trustedIssuers: trusted }))).toBe(
      'untrusted_issuer',
    );
    expect(reason(() => verifyGrant(g, { trustedIssuers: trusted, now: now + 60_001 }))).toBe(
      'expired',
    );
    expect(
      reason(() => verifyGrant(g, { trustedIssuers: trusted, isRevoked: (id) => id === 'g1' })),
    ).toBe('revoked');
    expect(
      reason(() =>
        verifyGrant(g, {
          trustedIssuers: trusted,
          expect: { argsHash: hashArgs({ path: 'b.txt' }) },
        }),
      ),
    ).toBe('mismatch_argsHash');
    expect(
      reason(() => verifyGrant(g, { trustedIssuers: trusted, expect: { runId: 'run2' } })),
    ).toBe('mismatch_runId');
    expect(reason(() => verifyGrant(g, { trustedIssuers: [] }))).toBe('untrusted_issuer');
  });

  it('is expired at exactly expiresAt, and valid one millisecond before', () => {
    const g = signer.sign(body);
    expect(verifyGrant(g, { trustedIssuers: trusted, now: body.expiresAt - 1 })).toEqual(g);
    expect(reason(() => verifyGrant(g, { trustedIssuers: trusted, now: body.expiresAt }))).toBe(
      'expired',
    );
  });

  it('refuses a grant issued further in the future than the allowed clock skew', () => {
    // Default skew is 5 s: issued 5 s ahead of the verifier's clock is tolerated, 5 s + 1 ms is not.
    const g = signer.sign(body);
    expect(verifyGrant(g, { trustedIssuers: trusted, now: now - 5_000 })).toEqual(g);
    expect(reason(() => verifyGrant(g, { trustedIssuers: trusted, now: now - 5_001 }))).toBe(
      'not_yet_valid',
    );
    // A verifier configured with a tighter skew applies it.
    expect(verifyGrant(g, { trustedIssuers: trusted, now: now - 100, clockSkewMs: 100 })).toEqual(
      g,
    );
    expect(
      reason(() => verifyGrant(g, { trustedIssuers: trusted, now: now - 101, clockSkewMs: 100 })),
    ).toBe('not_yet_valid');
  });

  it('signs exactly like the nkeys reference implementation (ed25519 is deterministic)', async () => {
    const { fromSeed } = await import('@nats-io/nkeys');
    const kp = fromSeed(new TextEncoder().encode(seed));
    const g = signer.sign(body);
    const { sig, ...signed } = g;
    const reference = Buffer.from(
      kp.sign(new TextEncoder().encode(canonicalJson(signed))),
    ).toString('base64url');
    expect(sig).toBe(reference);
  });

  it('hashes arguments canonically (key order does not matter)', () => {
    expect(hashArgs({ a: 1, b: { c: 2, d: [1, 2] } })).toBe(
      hashArgs({ b: { d: [1, 2], c: 2 }, a: 1 }),
    );
    expect(hashArgs({ a: 1 })).not.toBe(hashArgs({ a: 2 }));
    expect(canonicalJson({ b: 1, a: [true, null, 's'] })).toBe('{"a":[true,null,"s"],"b":1}');
  });
});
