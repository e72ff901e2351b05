import { createHash } from 'node:crypto';
import { base32Decode, base32Encode } from './ed25519.js';

// nkey seeds are base32 (RFC 4648, no padding) of: two prefix bytes (seed + key type), the
// 32-byte ed25519 seed, and a CRC-16/XMODEM of those, little-endian. @nats-io/nkeys makes
// seeds only from random bytes; a serving user is derived from a role's seed instead, so one
// secret per role is all an operator keeps.

const SEED_PREFIX = 18 << 3;
const USER_PREFIX = 20 << 3;

function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const b of bytes) {
    crc ^= b << 8;
    for (let i = 0; i < 8; i++)
      crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

/**
 * A user seed derived from another (valid) user seed and a label: the same inputs always give
 * the same seed, and the derived seed reveals nothing of its parent (SHA-256).
 */
export function deriveUserSeed(seed: string, label: string): string {
  const raw = base32Decode(seed.trim()).slice(2, 34);
  const derived = createHash('sha256').update(`reins.${label}.v1\0`).update(raw).digest();
  const body = new Uint8Array(34);
  body[0] = SEED_PREFIX | (USER_PREFIX >> 5);
  body[1] = (USER_PREFIX & 31) << 3;
  body.set(derived, 2);
  const crc = crc16(body);
  const full = new Uint8Array(36);
  full.set(body);
  full[34] = crc & 0xff;
  full[35] = crc >> 8;
  return base32Encode(full);
}
