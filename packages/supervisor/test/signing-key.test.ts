import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  NotFoundError,
  ProtocolError,
  createGrantSigner,
  hashArgs,
  verifyGrant,
} from '@reins/protocol';
import { loadSigningKey, trustedIssuersFromEnv } from '../src/index.js';

function logger() {
  const warnings: { obj: object; msg: string }[] = [];
  return { warnings, warn: (obj: object, msg: string) => warnings.push({ obj, msg }) };
}

describe('loadSigningKey', () => {
  let dir: string;
  const { signer, seed } = createGrantSigner();
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'reins-key-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('loads from options, env and files, in that order', async () => {
    const other = createGrantSigner();
    const file = join(dir, 'seed');
    await writeFile(file, `${seed}\n`);
    await chmod(file, 0o600);
    const env = { REINS_SUPERVISOR_SEED: other.seed };
    expect(loadSigningKey({ seed, env }).signer.publicKey).toBe(signer.publicKey);
    expect(loadSigningKey({ seedFile: file, env })).toMatchObject({ source: 'seedFile' });
    expect(loadSigningKey({ env }).signer.publicKey).toBe(other.signer.publicKey);
    const log = logger();
    const fromFile = loadSigningKey({ env: { REINS_SUPERVISOR_SEED_FILE: file }, logger: log });
    expect(fromFile).toMatchObject({ source: 'envFile' });
    expect(fromFile.signer.publicKey).toBe(signer.publicKey);
    expect(log.warnings).toHaveLength(0);
    // The loaded key signs grants that verify against its public key.
    const now = Date.now();
    const grant = fromFile.signer.sign({
      grantId: 'g1',
      runId: 'r1',
      agentId: 'a1',
      role: 'planner',
      kind: 'tool',
      tool: 't',
      argsHash: hashArgs({}),
      reserved: { inputTokens: 0, outputTokens: 0, usd: 0, steps: 1 },
      issuedAt: now,
      expiresAt: now + 60_000,
      issuer: signer.publicKey,
    });
    expect(
      verifyGrant(grant, {
        trustedIssuers: trustedIssuersFromEnv({ REINS_TRUSTED_ISSUERS: ` ${signer.publicKey} ,` }),
      }).grantId,
    ).toBe('g1');
  });

  it('warns about a seed file others can read', async () => {
    const file = join(dir, 'open-seed');
    await writeFile(file, seed);
    await chmod(file, 0o644);
    const log = logger();
    loadSigningKey({ seedFile: file, logger: log, env: {} });
    expect(log.warnings[0]?.msg).toMatch(/chmod 600/);
  });

  it('generates a dev key with a loud warning that says how to configure one', () => {
    const log = logger();
    const k = loadSigningKey({ env: {}, logger: log });
    expect(k.source).toBe('dev');
    expect(log.warnings).toHaveLength(1);
    expect(log.warnings[0]!.msg).toMatch(/REINS_SUPERVISOR_SEED_FILE/);
    expect(log.warnings[0]!.obj).toMatchObject({ publicKey: k.signer.publicKey });
    expect(() => loadSigningKey({ env: { NODE_ENV: 'production' } })).toThrow(NotFoundError);
    expect(() => loadSigningKey({ env: {}, allowDevKey: false })).toThrow(NotFoundError);
  });

  it('refuses bad seeds and missing files', () => {
    expect(() => loadSigningKey({ seed: 'not-a-seed', env: {} })).toThrow(ProtocolError);
    expect(() => loadSigningKey({ env: { REINS_SUPERVISOR_SEED: 'SUAXXXX' } })).toThrow(
      ProtocolError,
    );
    expect(() => loadSigningKey({ seedFile: join(dir, 'nope'), env: {} })).toThrow(/nope/);
  });
});

describe('trustedIssuersFromEnv', () => {
  it('parses a comma-separated list and refuses what is not a public account key', () => {
    const a = createGrantSigner().signer.publicKey;
    const b = createGrantSigner().signer.publicKey;
    expect(trustedIssuersFromEnv({})).toEqual([]);
    expect(trustedIssuersFromEnv({ REINS_TRUSTED_ISSUERS: '' })).toEqual([]);
    expect(trustedIssuersFromEnv({ REINS_TRUSTED_ISSUERS: `${a},${b},${a}` })).toEqual([a, b]);
    const { seed } = createGrantSigner();
    expect(() => trustedIssuersFromEnv({ REINS_TRUSTED_ISSUERS: `${a},${seed}` })).toThrow(
      ProtocolError,
    );
    expect(() => trustedIssuersFromEnv({ REINS_TRUSTED_ISSUERS: 'U'.padEnd(56, 'A') })).toThrow(
      ProtocolError,
    );
  });
});
