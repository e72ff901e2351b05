import { createUser, fromSeed } from '@nats-io/nkeys';
import { describe, expect, it } from 'vitest';
import { deriveUserSeed } from '@reins/protocol';

const text = (b: Uint8Array) => new TextDecoder().decode(b);

describe('deriveUserSeed', () => {
  it('derives a valid user seed, the same for the same seed and label, another otherwise', () => {
    const a = text(createUser().getSeed());
    const b = text(createUser().getSeed());
    const served = deriveUserSeed(a, 'serving');
    // nkeys checks the prefix and the CRC: a wrong encoding throws here.
    const kp = fromSeed(new TextEncoder().encode(served));
    expect(kp.getPublicKey()).toMatch(/^U[A-Z2-7]{55}$/);
    expect(served).toMatch(/^SU[A-Z2-7]{56}$/);
    expect(deriveUserSeed(a, 'serving')).toBe(served);
    expect(deriveUserSeed(`${a}\n`, 'serving')).toBe(served);
    expect(deriveUserSeed(a, 'other')).not.toBe(served);
    expect(deriveUserSeed(b, 'serving')).not.toBe(served);
    expect(kp.getPublicKey()).not.toBe(fromSeed(new TextEncoder().encode(a)).getPublicKey());
  });
});
