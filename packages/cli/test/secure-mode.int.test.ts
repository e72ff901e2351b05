// Secure mode from the command line, as an operator runs it: `reins keys init` writes the keys,
// nats-server runs with the generated config, and the CLI and `reins up --secure` connect with
// one nkey user per role. Real nats-server, the built binary, no mocks.
import { spawn } from 'node:child_process';
import { chmod, copyFile, cp, mkdir, mkdtemp, readFile, rm, stat, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { UnavailableError } from '@reins/protocol';
import { Runtime, createLogger, nkeyConnection } from '@reins/runtime';
import { findNatsServer, freePort } from '@reins/testing';
import { jsonLines, reins, reinsUp, type UpInfo, type UpProcess } from './cli-process.js';

const ROLES = ['supervisor', 'planner', 'executor', 'client'] as const;
type Role = (typeof ROLES)[number];
const GOAL = 'Read every document in docs/ and write a report to report.md';

interface KeysReport {
  dir: string;
  prefix: string;
  roles: { planner?: string[]; executor?: string[] };
  keys: { role: Role; file: string; publicKey: string; action: string }[];
  authConfig: string;
  natsConfig: { file: string; written: boolean };
  env: Record<Role, { REINS_NKEY_SEED_FILE: string }>;
  warnings: string[];
}

const mode = async (path: string) => (await stat(path)).mode & 0o777;
const seedOf = async (dir: string, role: Role) =>
  (await readFile(join(dir, `${role}.nk`), 'utf8')).trim();
const seedsOf = async (dir: string) =>
  Object.fromEntries(
    await Promise.all(ROLES.map(async (r) => [r, await seedOf(dir, r)])),
  ) as Record<Role, string>;

async function keysInit(
  args: string[],
): Promise<{ code: number | null; report: KeysReport; out: string }> {
  const r = await reins(['keys', 'init', '--json', ...args]);
  return {
    code: r.code,
    report: JSON.parse(r.stdout || '{}') as KeysReport,
    out: r.stdout + r.stderr,
  };
}

/** `nats-server -c <dir>/nats.conf` as the keys init output suggests (on a free port). */
async function startFromNatsConf(conf: string) {
  // The example's relative store_dir lands in this throw-away working directory.
  const cwd = await mkdtemp(join(tmpdir(), 'reins-keys-nats-'));
  const port = await freePort();
  const child = spawn(findNatsServer(), ['-c', conf, '-p', String(port)], {
    cwd,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`nats-server not ready:\n${log}`)), 20_000);
    const onData = (d: Buffer) => {
      log += d.toString();
      if (log.includes('Server is ready')) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`nats-server exited (${String(code)}):\n${log}`));
    });
  });
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
    await rm(cwd, { recursive: true, force: true });
  };
  return { url: `nats://127.0.0.1:${port}`, stop, [Symbol.asyncDispose]: stop };
}

/** Resolves with the first output line of `up` matching `re` (a generous deadline catches hangs). */
function untilLine(up: UpProcess, re: RegExp, ms = 20_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const line = up.lines.find((l) => re.test(l));
      if (line === undefined) return;
      done();
      resolve(line);
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`no line matching ${String(re)}`));
    }, ms);
    const done = () => {
      clearTimeout(timer);
      up.child.stdout?.off('data', check);
    };
    // reinsUp's own listener, added first, has pushed the new lines by the time this one runs.
    up.child.stdout?.on('data', check);
    check();
  });
}

describe('reins keys init', () => {
  let root: string;
  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'reins-keys-'));
  });
  afterAll(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('writes one 0600 seed per role in a 0700 directory, the server config and the env each service needs, and never prints a seed', async () => {
    const dir = join(root, 'a', 'secure');
    const { code, report, out } = await keysInit(['--dir', dir]);
    expect(code).toBe(0);
    expect(report.dir).toBe(dir);
    expect(report.prefix).toBe('reins.v1');
    expect(await mode(dir)).toBe(0o700);
    expect(report.keys.map((k) => k.role)).toEqual([...ROLES]);
    const auth = await readFile(join(dir, 'reins-auth.conf'), 'utf8');
    expect(auth).toContain('authorization {');
    const seeds = await seedsOf(dir);
    for (const k of report.keys) {
      expect(k.file).toBe(join(dir, `${k.role}.nk`));
      expect(k.action).toBe('generated');
      expect(await mode(k.file)).toBe(0o600);
      expect(seeds[k.role]).toMatch(/^SU[A-Z2-7]+$/);
      expect(auth).toContain(`nkey: "${k.publicKey}"`);
      expect(report.env[k.role]).toEqual({ REINS_NKEY_SEED_FILE: k.file });
      // The server config names users by public key; no seed is printed or written to it.
      expect(out).not.toContain(seeds[k.role]);
      expect(auth).not.toContain(seeds[k.role]);
    }
    expect(report.natsConfig.written).toBe(true);
    expect(await readFile(report.natsConfig.file, 'utf8')).toContain('include ./reins-auth.conf');

    const text = await reins(['keys', 'init', '--dir', join(root, 'b')]);
    expect(text.code).toBe(0);
    const textSeeds = await seedsOf(join(root, 'b'));
    for (const role of ROLES) {
      expect(text.stdout).toContain(`REINS_NKEY_SEED_FILE=${join(root, 'b', `${role}.nk`)}`);
      expect(text.stdout + text.stderr).not.toContain(textSeeds[role]);
    }
  });

  it('refuses to overwrite existing seeds (KEYS_EXIST, exit 2) and leaves every file as it was', async () => {
    const dir = join(root, 'a', 'secure');
    const before = await seedsOf(dir);
    const auth = await readFile(join(dir, 'reins-auth.conf'), 'utf8');
    const again = await reins(['keys', 'init', '--dir', dir]);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain('secure-mode keys already exist');
    expect(again.stderr).toContain('[KEYS_EXIST]');
    expect(again.stderr).toMatch(/--keep-existing.*--rotate.*--force/);
    expect(await seedsOf(dir)).toEqual(before);
    expect(await readFile(join(dir, 'reins-auth.conf'), 'utf8')).toBe(auth);

    const both = await reins(['keys', 'init', '--dir', dir, '--force', '--keep-existing']);
    expect(both.code).toBe(2);
    const badRole = await reins(['keys', 'init', '--dir', dir, '--rotate', 'admin']);
    expect(badRole.code).toBe(2);
    expect(badRole.stderr).toContain('supervisor, planner, executor, client');
    expect(await seedsOf(dir)).toEqual(before);
  });

  it('--keep-existing only fills in missing seeds, --rotate replaces one role, --force every one; the config follows', async () => {
    const dir = join(root, 'c');
    expect((await keysInit(['--dir', dir, '--planner-roles', 'researcher'])).code).toBe(0);
    const first = await seedsOf(dir);
    const firstKeys = (await keysInit(['--dir', dir, '--keep-existing'])).report.keys;

    await unlink(join(dir, 'planner.nk'));
    await chmod(join(dir, 'client.nk'), 0o644);
    const kept = await keysInit(['--dir', dir, '--keep-existing']);
    expect(kept.code).toBe(0);
    expect(Object.fromEntries(kept.report.keys.map((k) => [k.role, k.action]))).toEqual({
      supervisor: 'kept',
      planner: 'generated',
      executor: 'kept',
      client: 'kept',
    });
    // The roles recorded by the first run still apply.
    expect(kept.report.roles).toEqual({ planner: ['researcher'] });
    expect(kept.report.warnings.join('\n')).toContain(
      `${join(dir, 'client.nk')} is readable by group or others`,
    );
    const afterKeep = await seedsOf(dir);
    expect(afterKeep.supervisor).toBe(first.supervisor);
    expect(afterKeep.client).toBe(first.client);
    expect(afterKeep.planner).not.toBe(first.planner);
    const auth = await readFile(join(dir, 'reins-auth.conf'), 'utf8');
    const oldPlanner = firstKeys.find((k) => k.role === 'planner')!.publicKey;
    const newPlanner = kept.report.keys.find((k) => k.role === 'planner')!.publicKey;
    expect(auth).not.toContain(oldPlanner);
    expect(auth).toContain(newPlanner);
    expect(auth).toContain('reins.v1.task.researcher');

    const rotated = await keysInit(['--dir', dir, '--rotate', 'client']);
    expect(rotated.code).toBe(0);
    const afterRotate = await seedsOf(dir);
    expect(afterRotate.client).not.toBe(afterKeep.client);
    expect(await mode(join(dir, 'client.nk'))).toBe(0o600);
    expect({ ...afterRotate, client: '' }).toEqual({ ...afterKeep, client: '' });

    const forced = await keysInit(['--dir', dir, '--force']);
    expect(forced.code).toBe(0);
    expect(forced.report.keys.every((k) => k.action === 'replaced')).toBe(true);
    const afterForce = await seedsOf(dir);
    for (const role of ROLES) expect(afterForce[role]).not.toBe(afterRotate[role]);
  });
});

describe('a nats-server started with the generated config', () => {
  let dir: string;
  let other: string;
  let nats: Awaited<ReturnType<typeof startFromNatsConf>>;

  beforeAll(async () => {
    const root = await mkdtemp(join(tmpdir(), 'reins-keys-server-'));
    dir = join(root, 'secure');
    other = join(root, 'other');
    expect((await reins(['keys', 'init', '--dir', dir])).code).toBe(0);
    expect((await reins(['keys', 'init', '--dir', other])).code).toBe(0);
    nats = await startFromNatsConf(join(dir, 'nats.conf'));
  });
  afterAll(async () => {
    await nats.stop();
    await rm(join(dir, '..'), { recursive: true, force: true });
  });

  it('refuses a connection without credentials and accepts the client seed', async () => {
    const logger = createLogger({ level: 'silent' });
    const refused = await Runtime.connect({
      servers: nats.url,
      logger,
      ensureInfrastructure: false,
      connection: { reconnect: false, timeout: 3000 },
    }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(UnavailableError);
    expect(((refused as Error).cause as Error).name).toBe('AuthorizationError');

    const client = await Runtime.connect({
      servers: nats.url,
      logger,
      ensureInfrastructure: false,
      connection: {
        reconnect: false,
        timeout: 3000,
        ...nkeyConnection(await seedOf(dir, 'client')),
      },
    });
    // The client user may ask for JetStream account info, one of the few things it may do.
    const info = await client.nc.request('$JS.API.INFO', undefined, { timeout: 3000 });
    expect(info.json<{ type?: string }>().type).toBe(
      'io.nats.jetstream.api.v1.account_info_response',
    );
    await client.close();
  });

  it('the CLI says the server wants credentials, and connects with REINS_NKEY_SEED_FILE or --nkey-file', async () => {
    const anonymous = await reins(['runs', '--nats', nats.url]);
    expect(anonymous.code).toBe(1);
    expect(anonymous.stderr).toContain(`NATS at ${nats.url} refused the credentials`);
    expect(anonymous.stderr).toContain('[NATS_AUTH]');
    expect(anonymous.stderr).toContain('REINS_NKEY_SEED_FILE');

    // A user of another key directory is not one of this server's users.
    const stranger = await reins([
      'runs',
      '--nats',
      nats.url,
      '--nkey-file',
      join(other, 'client.nk'),
    ]);
    expect(stranger.code).toBe(1);
    expect(stranger.stderr).toContain('[NATS_AUTH]');

    // Past authentication: the only thing missing is a supervisor.
    const viaEnv = await reins(['runs', '--nats', nats.url], {
      REINS_NKEY_SEED_FILE: join(dir, 'client.nk'),
    });
    expect(viaEnv.code).toBe(1);
    expect(viaEnv.stderr).toContain('no supervisor answered on reins.v1.runs.list');
    const viaSeed = await reins(['runs', '--nats', nats.url], {
      REINS_NKEY_SEED: await seedOf(dir, 'client'),
    });
    expect(viaSeed.stderr).toContain('no supervisor answered');

    const doctor = await reins([
      'doctor',
      '--json',
      '--nats',
      nats.url,
      '--nkey-file',
      join(dir, 'client.nk'),
    ]);
    const checks = (
      JSON.parse(doctor.stdout) as { checks: { name: string; status: string; detail: string }[] }
    ).checks;
    expect(checks.find((c) => c.name === 'nats')).toMatchObject({ status: 'ok' });
    expect(checks.find((c) => c.name === 'jetstream')?.status).toBe('ok');
    const anonymousDoctor = await reins(['doctor', '--json', '--nats', nats.url]);
    const nat = (
      JSON.parse(anonymousDoctor.stdout) as {
        checks: { name: string; status: string; detail: string }[];
      }
    ).checks.find((c) => c.name === 'nats');
    expect(nat?.status).toBe('fail');
    expect(nat?.detail).toContain('refused the credentials');
  });

  it('bad credentials are a configuration error (exit 2); a seed file others can read is flagged', async () => {
    const both = await reins(['ps', '--nats', nats.url], {
      REINS_NKEY_SEED: await seedOf(dir, 'client'),
      REINS_NKEY_SEED_FILE: join(dir, 'client.nk'),
    });
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('not both');
    expect(both.stderr).toContain('[BAD_CREDENTIALS]');

    const missing = await reins(['ps', '--nats', nats.url, '--nkey-file', join(dir, 'nope.nk')]);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toContain('cannot read nkey seed file');

    const notASeed = await reins(['ps', '--nats', nats.url, '--nkey-file', join(dir, 'nats.conf')]);
    expect(notASeed.code).toBe(2);
    expect(notASeed.stderr).toContain('invalid nkey seed');

    const loose = join(dir, '..', 'loose.nk');
    await copyFile(join(dir, 'client.nk'), loose);
    await chmod(loose, 0o644);
    const r = await reins(['runs', '--nats', nats.url, '--nkey-file', loose]);
    expect(r.stderr).toContain(`nkey seed file ${loose} is readable by group or others`);
    expect(r.stderr).toContain('no supervisor answered');
  });
});

describe('reins up --secure', () => {
  let root: string;
  let keys: string;
  let up: UpProcess;
  let info: UpInfo;
  let env: Record<string, string>;
  const keysPublicKey = (role: Role): string => {
    const meta = JSON.parse(metaText) as { publicKeys: Record<Role, string> };
    return meta.publicKeys[role];
  };
  let metaText = '';

  beforeAll(async () => {
    root = await mkdtemp(join(tmpdir(), 'reins-up-secure-'));
    keys = join(root, 'keys');
    up = reinsUp(['--secure', '--keys', keys, '--log-level', 'warn']);
    info = await up.ready;
    env = { NATS_URL: info.natsUrl, REINS_NKEY_SEED_FILE: join(keys, 'client.nk') };
    metaText = await readFile(join(keys, 'reins-keys.json'), 'utf8');
  });
  afterAll(async () => {
    await up.stop();
    await rm(root, { recursive: true, force: true });
  });

  it('generates the keys, starts nats-server with them and names the client seed to use', async () => {
    expect(info.secure).toEqual({
      keys,
      clientSeedFile: join(keys, 'client.nk'),
      generated: true,
    });
    expect(info.agents).toEqual(['supervisor-1', 'planner-1', 'executor-1']);
    expect(await mode(keys)).toBe(0o700);
    for (const role of ROLES) expect(await mode(join(keys, `${role}.nk`))).toBe(0o600);
    const seeds = await seedsOf(keys);
    for (const role of ROLES) expect(up.lines.join('\n')).not.toContain(seeds[role]);
  });

  it('refuses the CLI without credentials and lists the agents with the client seed', async () => {
    const anonymous = await reins(['ps', '--json', '--nats', info.natsUrl]);
    expect(anonymous.code).toBe(1);
    // Under --json the error is one JSON object.
    expect(JSON.parse(anonymous.stderr)).toMatchObject({ code: 'NATS_AUTH' });

    const ps = await reins(['ps', '--json'], env);
    expect(ps.code).toBe(0);
    const agents = JSON.parse(ps.stdout) as { agentId: string; role: string; status: string }[];
    expect(agents.map((a) => a.agentId).sort()).toEqual([...info.agents].sort());
    expect(agents.every((a) => a.status === 'running')).toBe(true);
  });

  it('runs a governed run to completion with every service on its own user, without a permission violation', async () => {
    const r = await reins(['run', GOAL, '--follow', '--json', '--max-steps', '20'], env);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = jsonLines(r.stdout) as { event?: string; run?: { status: string } }[];
    expect(lines.at(-1)?.run?.status).toBe('completed');
    expect(lines.map((l) => l.event)).toContain('tool.call');
    expect(await readFile(join(info.sandbox, 'report.md'), 'utf8')).toContain('2 documents');
    // nats-server logs every refused publish or subscribe; the swarm's own work needs none.
    expect(up.lines.filter((l) => /Violation/.test(l))).toEqual([]);
  });

  it('halts and resumes every actor with the client seed', async () => {
    const halt = await reins(['halt', '--all', '--reason', 'secure test', '--json'], env);
    expect(halt.code).toBe(0);
    const reply = JSON.parse(halt.stdout) as { acked: string[]; missing: string[] };
    expect([...reply.acked].sort()).toEqual(['executor-1', 'planner-1']);
    expect(reply.missing).toEqual([]);
    expect((await reins(['resume', '--all'], env)).code).toBe(0);
  });

  it("the audit log is the supervisor user's to read: the client is refused and told which seed to use", async () => {
    const asClient = await reins(['audit', 'verify'], env);
    expect(asClient.code).toBe(1);
    expect(asClient.stderr).toContain('may not read the audit stream');
    expect(asClient.stderr).toContain('[NATS_PERMISSION]');
    expect(asClient.stderr).toContain('supervisor.nk');
    // nats-server refused it, and logs it (the log the run above was checked against). Verify
    // reads the anchors first (KV_reins_audit_anchors), then the stream.
    expect(
      await untilLine(up, /Publish Violation.*(REINS_AUDIT|KV_reins_audit_anchors)/),
    ).toContain(keysPublicKey('client'));

    const asSupervisor = await reins(
      ['audit', 'verify', '--nkey-file', join(keys, 'supervisor.nk')],
      env,
    );
    expect(asSupervisor.code).toBe(0);
    expect(asSupervisor.stdout).toContain('audit chain intact');
  });

  it('starts again on the same keys; keys that do not fit the swarm are refused before anything starts', async () => {
    const second = reinsUp(['--secure', '--keys', keys, '--log-level', 'warn']);
    try {
      const again = await second.ready;
      expect(again.secure?.generated).toBe(false);
      const ps = await reins(['ps', '--json'], { ...env, NATS_URL: again.natsUrl });
      expect(ps.code).toBe(0);
      expect((JSON.parse(ps.stdout) as unknown[]).length).toBe(3);
      expect(await second.stop()).toBe(0);
    } finally {
      await second.stop();
    }

    // The keys `reins up` generated let the planner user serve its role only.
    const role = await reins(['up', '--secure', '--keys', keys, '--role', 'researcher']);
    expect(role.code).toBe(2);
    expect(role.stderr).toContain('[KEYS_MISMATCH]');
    expect(role.stderr).toContain('--planner-roles planner,researcher');

    const prefix = await reins(['up', '--secure', '--keys', keys], { REINS_PREFIX: 'acme.v1' });
    expect(prefix.code).toBe(2);
    expect(prefix.stderr).toContain('made for the subject prefix reins.v1');

    // A seed replaced by hand is not a user of the server config any more.
    const copy = join(root, 'copy');
    await cp(keys, copy, { recursive: true });
    const stranger = await mkdtemp(join(tmpdir(), 'reins-stranger-'));
    expect((await reins(['keys', 'init', '--dir', stranger])).code).toBe(0);
    await copyFile(join(stranger, 'client.nk'), join(copy, 'client.nk'));
    await rm(stranger, { recursive: true, force: true });
    const mismatch = await reins(['up', '--secure', '--keys', copy]);
    expect(mismatch.code).toBe(2);
    expect(mismatch.stderr).toContain('does not list the public key of client');
    expect(mismatch.stderr).toContain('--keep-existing');

    await unlink(join(copy, 'executor.nk'));
    const incomplete = await reins(['up', '--secure', '--keys', copy]);
    expect(incomplete.code).toBe(2);
    expect(incomplete.stderr).toContain('[KEYS_INCOMPLETE]');

    const keysInsecure = await reins(['up', '--insecure', '--keys', keys]);
    expect(keysInsecure.code).toBe(2);
    expect(keysInsecure.stderr).toContain('--keys only applies in secure mode');
  });
});

describe('reins up with no flags: secure by default, keys found from the project', () => {
  let project: string;
  let up: UpProcess;
  let info: UpInfo;

  beforeAll(async () => {
    // A project: its root holds .git; commands run from a folder below it.
    project = await mkdtemp(join(tmpdir(), 'reins-project-'));
    await mkdir(join(project, '.git'));
    await mkdir(join(project, 'src', 'deep'), { recursive: true });
    up = reinsUp(['--log-level', 'warn'], { REINS_HOME: undefined }, { cwd: project });
    info = await up.ready;
  });
  afterAll(async () => {
    await up.stop();
    await rm(project, { recursive: true, force: true });
  });

  it("generates the keys under the project's .reins/ (0700, 0600 seeds, git-ignored) and runs nats-server with them", async () => {
    const keys = join(project, '.reins', 'secure');
    expect(info.secure).toEqual({ keys, clientSeedFile: join(keys, 'client.nk'), generated: true });
    expect(await mode(keys)).toBe(0o700);
    for (const role of ROLES) expect(await mode(join(keys, `${role}.nk`))).toBe(0o600);
    expect((await readFile(join(keys, '.gitignore'), 'utf8')).split('\n')).toContain('*');
    expect(up.stderr()).not.toContain('insecure');

    // An unauthenticated connection is refused (the default REINS_HOME of the tests has no keys).
    const anonymous = await reins(['ps', '--json', '--nats', info.natsUrl]);
    expect(anonymous.code).toBe(1);
    // Under --json the error is one JSON object.
    expect(JSON.parse(anonymous.stderr)).toMatchObject({ code: 'NATS_AUTH' });
  });

  it('reins run from a folder of the project finds the client seed and completes a run', async () => {
    const env = { NATS_URL: info.natsUrl, REINS_HOME: undefined };
    const cwd = join(project, 'src', 'deep');
    const r = await reins(['run', GOAL, '--follow', '--json', '--max-steps', '20'], env, 60_000, {
      cwd,
    });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = jsonLines(r.stdout) as { run?: { status: string } }[];
    expect(lines.at(-1)?.run?.status).toBe('completed');

    const doctor = await reins(['doctor', '--json'], env, 60_000, { cwd });
    const report = JSON.parse(doctor.stdout) as { checks: { name: string; detail: string }[] };
    expect(report.checks.find((c) => c.name === 'nats')?.detail).toContain(
      "with the nkey of the project's keys",
    );
    // REINS_HOME names the keys from anywhere.
    const home = await reins(['ps', '--json'], {
      NATS_URL: info.natsUrl,
      REINS_HOME: join(project, '.reins'),
    });
    expect(home.code).toBe(0);
  });
});

describe('reins up --insecure', () => {
  it('runs without credentials and warns once, at start', async () => {
    const up = reinsUp(['--insecure', '--log-level', 'warn']);
    try {
      const info = await up.ready;
      expect(info.secure).toBeUndefined();
      const warnings = up
        .stderr()
        .split('\n')
        .filter((l) => l.includes('insecure:'));
      expect(warnings).toEqual([
        'reins: warning: insecure: no NATS credentials, any connection may publish anything — for local experiments only (docs/secure-mode.md)',
      ]);
      // The services it starts do not repeat it.
      expect(up.lines.filter((l) => l.includes('insecure:'))).toEqual([]);
      const ps = await reins(['ps', '--json', '--nats', info.natsUrl]);
      expect(ps.code).toBe(0);
      expect((JSON.parse(ps.stdout) as unknown[]).length).toBe(3);
      expect(await up.stop()).toBe(0);
    } finally {
      await up.stop();
    }
  });
});
