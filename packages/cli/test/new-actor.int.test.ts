// `reins new actor` as a user runs it: the built binary, in a throw-away pnpm workspace that
// looks like the Reins repo (its protocol, runtime and testing packages and node_modules are
// linked in), never in the repository itself. The generated package must typecheck, pass
// Prettier and pass its own test against a real nats-server.
import { spawn } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reins, type CliResult } from './cli-process.js';

const REPO = fileURLToPath(new URL('../../../', import.meta.url));
const TSC = join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
const VITEST = join(REPO, 'node_modules', 'vitest', 'vitest.mjs');
const PRETTIER = join(REPO, 'node_modules', 'prettier', 'bin', 'prettier.cjs');

/** Runs `node <script> <args>` in `cwd` to the end. */
function node(script: string, args: string[], cwd: string): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [script, ...args], {
      cwd,
      env: { ...process.env, NO_COLOR: '1', FORCE_COLOR: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

interface NewResult {
  package: string;
  role: string;
  path: string;
  files: string[];
  tsconfigReference: boolean;
  workspaceGlob?: string;
  installed: boolean;
  next: string[];
}

describe('reins new actor', () => {
  let ws: string;
  const inWs = (args: string[]) => reins(args, {}, 60_000, { cwd: ws });

  beforeAll(async () => {
    ws = await mkdtemp(join(tmpdir(), 'reins-new-actor-'));
    await mkdir(join(ws, 'packages'));
    for (const p of ['protocol', 'runtime', 'testing'])
      await symlink(join(REPO, 'packages', p), join(ws, 'packages', p), 'dir');
    await symlink(join(REPO, 'node_modules'), join(ws, 'node_modules'), 'dir');
    await writeFile(join(ws, 'pnpm-workspace.yaml'), 'packages:\n  - packages/*\n');
    for (const f of ['tsconfig.base.json', '.prettierrc.json'])
      await copyFile(join(REPO, f), join(ws, f));
    await writeFile(
      join(ws, 'package.json'),
      `${JSON.stringify({ name: 'ws', private: true, type: 'module', engines: { node: '>=22.12' }, devDependencies: { zod: '^4.6.7' } }, null, 2)}\n`,
    );
    // A project after which nothing should be inserted (the repo lists bench last).
    await mkdir(join(ws, 'bench'));
    await writeFile(join(ws, 'bench', 'tsconfig.json'), '{ "files": [] }\n');
    const refs = ['packages/protocol', 'packages/runtime', 'bench'].map((path) => ({ path }));
    await writeFile(
      join(ws, 'tsconfig.json'),
      `${JSON.stringify({ files: [], references: refs }, null, 2)}\n`,
    );
    // Typechecks the generated sources and test together, as the repo's tsconfig.test.json does.
    await writeFile(
      join(ws, 'tsconfig.check.json'),
      JSON.stringify({
        extends: './tsconfig.base.json',
        compilerOptions: {
          noEmit: true,
          composite: false,
          declaration: false,
          declarationMap: false,
          rootDir: '.',
        },
        include: ['packages/reviewer/src', 'packages/reviewer/test'],
      }),
    );
  });

  afterAll(async () => {
    await rm(ws, { recursive: true, force: true });
  });

  it('writes a package, wires it into tsconfig.json, and says what to run next', async () => {
    const r = await inWs(['new', 'actor', 'reviewer', '--no-install', '--json']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as NewResult;
    expect(out).toMatchObject({
      package: '@reins/reviewer',
      role: 'reviewer',
      path: 'packages/reviewer',
      tsconfigReference: true,
      installed: false,
    });
    expect(out.workspaceGlob).toBeUndefined();
    expect(out.next).toEqual([
      'pnpm install',
      'pnpm exec tsc -b',
      'pnpm exec vitest run packages/reviewer',
      'NATS_URL=nats://127.0.0.1:4222 node packages/reviewer/dist/main.js',
    ]);
    for (const f of [
      'package.json',
      'tsconfig.json',
      'README.md',
      'src/index.ts',
      'src/main.ts',
      'test/reviewer.int.test.ts',
    ]) {
      expect(out.files).toContain(`packages/reviewer/${f}`);
      expect((await stat(join(ws, 'packages', 'reviewer', f))).isFile()).toBe(true);
    }

    const root = JSON.parse(await readFile(join(ws, 'tsconfig.json'), 'utf8')) as {
      references: { path: string }[];
    };
    expect(root.references.map((x) => x.path)).toEqual([
      'packages/protocol',
      'packages/runtime',
      'packages/reviewer',
      'bench',
    ]);

    const pkg = JSON.parse(
      await readFile(join(ws, 'packages', 'reviewer', 'package.json'), 'utf8'),
    ) as Record<string, unknown>;
    expect(pkg).toMatchObject({
      name: '@reins/reviewer',
      type: 'module',
      engines: { node: '>=22.12' },
      exports: { '.': { types: './dist/index.d.ts', default: './dist/index.js' } },
      dependencies: {
        '@reins/protocol': 'workspace:*',
        '@reins/runtime': 'workspace:*',
        zod: '^4.6.7',
      },
      devDependencies: { '@reins/testing': 'workspace:*' },
    });
    const tsconfig = JSON.parse(
      await readFile(join(ws, 'packages', 'reviewer', 'tsconfig.json'), 'utf8'),
    ) as { extends: string; references: { path: string }[] };
    expect(tsconfig.extends).toBe('../../tsconfig.base.json');
    expect(tsconfig.references).toEqual([{ path: '../protocol' }, { path: '../runtime' }]);

    const index = await readFile(join(ws, 'packages', 'reviewer', 'src', 'index.ts'), 'utf8');
    expect(index).toContain('export async function startReviewer(');
    expect(index).toContain('defineActor(');
    expect(index).toContain('actor.handle(');
    const main = await readFile(join(ws, 'packages', 'reviewer', 'src', 'main.ts'), 'utf8');
    expect(main).toContain("runService('reins-reviewer'");
  });

  it('generates code that typechecks, is Prettier-clean, and whose test passes', async () => {
    const build = await node(TSC, ['--noEmit', '-p', 'packages/reviewer/tsconfig.json'], ws);
    expect(build.stdout + build.stderr).toBe('');
    expect(build.code).toBe(0);
    const withTest = await node(TSC, ['-p', 'tsconfig.check.json'], ws);
    expect(withTest.stdout + withTest.stderr).toBe('');
    expect(withTest.code).toBe(0);

    const format = await node(PRETTIER, ['--check', 'packages/reviewer', 'tsconfig.json'], ws);
    expect(format.code, format.stdout + format.stderr).toBe(0);

    const test = await node(VITEST, ['run', '--root', '.', 'packages/reviewer'], ws);
    expect(test.code, test.stdout + test.stderr).toBe(0);
    expect(test.stdout).toMatch(/Tests\s+2 passed/);
  });

  it('refuses invalid and taken names (exit 2) and leaves the workspace alone', async () => {
    const before = await readFile(join(ws, 'tsconfig.json'), 'utf8');
    for (const bad of ['Reviewer', '1st', 'a_b', 'x'.repeat(42), '../escape']) {
      const r = await inWs(['new', 'actor', bad, '--no-install']);
      expect(r.code, bad).toBe(2);
      expect(r.stderr).toContain('invalid actor name');
    }
    const again = await inWs(['new', 'actor', 'reviewer', '--no-install']);
    expect(again.code).toBe(2);
    expect(again.stderr).toContain('packages/reviewer already exists');

    // A package of that name elsewhere in the workspace is taken too.
    const taken = await inWs(['new', 'actor', 'runtime', '--no-install', '--dir', 'services']);
    expect(taken.code).toBe(2);
    expect(taken.stderr).toContain('package @reins/runtime already exists in packages/runtime');

    const badRole = await inWs(['new', 'actor', 'scorer', '--role', 'no spaces', '--no-install']);
    expect(badRole.code).toBe(2);
    expect(badRole.stderr).toContain('invalid role');

    const outside = await reins(['new', 'actor', 'scorer', '--no-install'], {}, 60_000, {
      cwd: tmpdir(),
    });
    expect(outside.code).toBe(2);
    expect(outside.stderr).toContain('no pnpm workspace');
    expect(await readFile(join(ws, 'tsconfig.json'), 'utf8')).toBe(before);
  });

  it('takes a role and a folder; a folder outside the workspace globs is added to them', async () => {
    const r = await inWs([
      'new',
      'actor',
      'price-check',
      '--role',
      'pricing',
      '--dir',
      'services',
      '--no-install',
    ]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(
      'created @reins/price-check (role pricing) in services/price-check/',
    );
    expect(r.stdout).toContain('added services/* to pnpm-workspace.yaml');
    expect(r.stdout).toContain('pnpm exec vitest run services/price-check');
    expect(await readFile(join(ws, 'pnpm-workspace.yaml'), 'utf8')).toBe(
      'packages:\n  - services/*\n  - packages/*\n',
    );
    const index = await readFile(join(ws, 'services', 'price-check', 'src', 'index.ts'), 'utf8');
    expect(index).toContain("export const PRICE_CHECK_ROLE = 'pricing';");
    expect(index).toContain('export async function startPriceCheck(');
    const tsconfig = await readFile(join(ws, 'services', 'price-check', 'tsconfig.json'), 'utf8');
    expect(tsconfig).toContain('../../packages/runtime');
  });
});
