import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';

// Ed25519 through Node's native crypto (OpenSSL), keyed by nkeys strings. The pure-JS signer
// in @nats-io/nkeys costs milliseconds per signature; the native one costs microseconds, and
// ed25519 is deterministic, so both produce the same signatures.

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';

/** RFC 4648 base32 (no padding), as nkeys use it; throws a `TypeError` on another character. */
export function base32Decode(text: string): Uint8Array {
  const out: number[] = [];
  let bits = 0;
  let value = 0;
  for (const ch of text) {
    const i = ALPHABET.indexOf(ch);
    if (i < 0) throw new TypeError('invalid base32');
    value = (value << 5) | i;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Uint8Array.from(out);
}

/** RFC 4648 base32 without padding, as nkeys use it. */
export function base32Encode(bytes: Uint8Array): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const b of bytes) {
    value = ((value << 8) | b) & 0xffff;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

const b64url = (b: Uint8Array) => Buffer.from(b).toString('base64url');

/** The raw 32-byte ed25519 key inside an nkey public key (`A…`, `U…`, …); validate it first. */
export function rawPublicKey(publicKey: string): Uint8Array {
  return base32Decode(publicKey).slice(1, 33);
}

/** A native private key for an nkey seed (`S…`) and its public key; validate the seed first. */
export function nativePrivateKey(seed: string, publicKey: string): KeyObject {
  const raw = base32Decode(seed).slice(2, 34);
  return createPrivateKey({
    key: { kty: 'OKP', crv: 'Ed25519', d: b64url(raw), x: b64url(rawPublicKey(publicKey)) },
    format: 'jwk',
  });
}

const publicKeys = new Map<string, KeyObject>();

/** A cached native public key for an nkey public key; validate it first. */
export function nativePublicKey(publicKey: string): KeyObject {
  let key = publicKeys.get(publicKey);
  if (!key) {
    key = createPublicKey({
      key: { kty: 'OKP', crv: 'Ed25519', x: b64url(rawPublicKey(publicKey)) },
      format: 'jwk',
    });
    if (publicKeys.size > 1000) publicKeys.clear();
    publicKeys.set(publicKey, key);
  }
  return key;
}

/** Ed25519 signature of `data`. */
export function signEd25519(key: KeyObject, data: Uint8Array): Uint8Array {
  return sign(null, data, key);
}

/** True when `sig` is a valid ed25519 signature of `data` by `key`. Never throws. */
export function verifyEd25519(key: KeyObject, data: Uint8Array, sig: Uint8Array): boolean {
  try {
    return verify(null, data, key, sig);
  } catch {
    return false;
  }
}
