import {
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  rename,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createFileTools, runTool } from '@reins/models';
import { createFileToolsWithHooks } from '../src/file-tools.js';

const ctx = { runId: 'run1', stepId: 'step1', idempotencyKey: 'k1' };

describe('createFileTools', () => {
  let base: string;
  let root: string;
  let outside: string;
  beforeEach(async () => {
    base = await mkdtemp(join(tmpdir(), 'reins-files-'));
    root = join(base, 'sandbox');
    outside = join(base, 'outside');
    await mkdir(join(root, 'docs'), { recursive: true });
    await mkdir(outside);
    await writeFile(join(root, 'docs', 'a.md'), '# A\nhello\n');
    await writeFile(join(outside, 'secret.txt'), 'TOP SECRET');
  });
  afterEach(async () => {
    await rm(base, { recursive: true, force: true });
  });

  it('reads, lists and writes inside the sandbox', async () => {
    const { readFile: read, writeFile: write, listFiles } = createFileTools({ root });
    await expect(runTool(read, { path: 'docs/a.md' }, ctx)).resolves.toEqual({
      path: 'docs/a.md',
      content: '# A\nhello\n',
      bytes: 10,
      truncated: false,
    });
    await expect(
      runTool(write, { path: 'out/deep/r.md', content: 'report ✓' }, ctx),
    ).resolves.toEqual({
      path: 'out/deep/r.md',
      bytes: 10,
    });
    expect(await readFile(join(root, 'out', 'deep', 'r.md'), 'utf8')).toBe('report ✓');
    await runTool(write, { path: 'out/deep/r.md', content: 'v2' }, ctx);
    expect(await readFile(join(root, 'out', 'deep', 'r.md'), 'utf8')).toBe('v2');
    // Atomic write leaves no temp files behind.
    expect(await readdir(join(root, 'out', 'deep'))).toEqual(['r.md']);
    await expect(runTool(listFiles, { path: '.' }, ctx)).resolves.toEqual({
      path: '.',
      entries: [
        { name: 'docs', type: 'dir', size: 0 },
        { name: 'out', type: 'dir', size: 0 },
      ],
      truncated: false,
    });
    await expect(runTool(listFiles, {}, ctx)).resolves.toMatchObject({ path: '.' });
  });

  it('truncates big files at maxReadBytes', async () => {
    await writeFile(join(root, 'big.txt'), 'x'.repeat(100));
    const { readFile: read } = createFileTools({ root, maxReadBytes: 10 });
    await expect(runTool(read, { path: 'big.txt' }, ctx)).resolves.toMatchObject({
      content: 'x'.repeat(10),
      bytes: 100,
      truncated: true,
    });
  });

  it('refuses ../ escapes and absolute paths', async () => {
    const { readFile: read, writeFile: write, listFiles } = createFileTools({ root });
    for (const path of [
      '../outside/secret.txt',
      'docs/../../outside/secret.txt',
      '..',
      join(outside, 'secret.txt'),
      '/etc/passwd',
    ]) {
      await expect(runTool(read, { path }, ctx)).rejects.toMatchObject({ code: 'POLICY_DENIED' });
      await expect(runTool(write, { path, content: 'pwned' }, ctx)).rejects.toMatchObject({
        code: 'POLICY_DENIED',
      });
    }
    await expect(runTool(listFiles, { path: '../outside' }, ctx)).rejects.toMatchObject({
      code: 'POLICY_DENIED',
    });
    expect(await readFile(join(outside, 'secret.txt'), 'utf8')).toBe('TOP SECRET');
    // A .. that stays inside is fine.
    await expect(runTool(read, { path: 'docs/../docs/a.md' }, ctx)).resolves.toMatchObject({
      path: 'docs/a.md',
    });
  });

  it('refuses symlinks that point outside the sandbox', async () => {
    await symlink(join(outside, 'secret.txt'), join(root, 'link.txt'));
    await symlink(outside, join(root, 'linkdir'));
    const { readFile: read, writeFile: write, listFiles } = createFileTools({ root });
    await expect(runTool(read, { path: 'link.txt' }, ctx)).rejects.toMatchObject({
      code: 'POLICY_DENIED',
    });
    await expect(runTool(read, { path: 'linkdir/secret.txt' }, ctx)).rejects.toMatchObject({
      code: 'POLICY_DENIED',
    });
    await expect(runTool(listFiles, { path: 'linkdir' }, ctx)).rejects.toMatchObject({
      code: 'POLICY_DENIED',
    });
    await expect(
      runTool(write, { path: 'linkdir/new.txt', content: 'x' }, ctx),
    ).rejects.toMatchObject({
      code: 'POLICY_DENIED',
    });
    await expect(
      runTool(write, { path: 'linkdir/sub/new.txt', content: 'x' }, ctx),
    ).rejects.toMatchObject({
      code: 'POLICY_DENIED',
    });
    await expect(runTool(write, { path: 'link.txt', content: 'pwned' }, ctx)).rejects.toMatchObject(
      {
        code: 'POLICY_DENIED',
      },
    );
    expect(await readFile(join(outside, 'secret.txt'), 'utf8')).toBe('TOP SECRET');
    expect(await readdir(outside)).toEqual(['secret.txt']);
  });

  it('allows symlinks that stay inside the sandbox', async () => {
    await symlink(join(root, 'docs', 'a.md'), join(root, 'alias.md'));
    const { readFile: read } = createFileTools({ root });
    await expect(runTool(read, { path: 'alias.md' }, ctx)).resolves.toMatchObject({
      content: '# A\nhello\n',
    });
  });

  it('gives NOT_FOUND for missing files and BAD_REQUEST for a missing root', async () => {
    const { readFile: read } = createFileTools({ root });
    await expect(runTool(read, { path: 'nope.md' }, ctx)).rejects.toMatchObject({
      code: 'NOT_FOUND',
    });
    const broken = createFileTools({ root: join(base, 'does-not-exist') });
    await expect(runTool(broken.readFile, { path: 'a' }, ctx)).rejects.toMatchObject({
      code: 'BAD_REQUEST',
    });
  });
});

// The check-then-open window: a hook runs after a path was checked and before it is opened,
// and swaps a symlink pointing outside the sandbox in there.
describe.each([
  { mode: 'through /proc/self/fd', procFd: true },
  { mode: 'portable path', procFd: false },
])('createFileTools: symlink swapped in after the check ($mode)', ({ procFd }) => {
  let base: string;
  let root: string;
  let outside: string;
  beforeEach(async () => {
    base = await mkdtemp(join(tmpdir(), 'reins-swap-'));
    root = join(base, 'sandbox');
    outside = join(base, 'outside');
    await mkdir(join(root, 'docs'), { recursive: true });
    await mkdir(outside);
    await writeFile(join(root, 'docs', 'a.md'), 'inside');
    await writeFile(join(outside, 'a.md'), 'TOP SECRET');
    await writeFile(join(outside, 'secret.txt'), 'TOP SECRET');
  });
  afterEach(async () => {
    await rm(base, { recursive: true, force: true });
  });

  /** Moves `root/<dir>` aside and puts a symlink to the outside directory in its place. */
  const swapDir = (dir: string) => async () => {
    await rename(join(root, dir), join(root, `${dir}-moved`));
    await symlink(outside, join(root, dir));
  };
  const swapFile = (file: string) => async () => {
    await rm(join(root, file));
    await symlink(join(outside, 'secret.txt'), join(root, file));
  };
  const tools = (op: 'read' | 'write' | 'list', swap: () => Promise<void>) => {
    let calls = 0;
    return {
      ...createFileToolsWithHooks(
        { root },
        {
          procFd,
          beforeOpen: async (seen) => {
            if (seen !== op) return;
            calls += 1;
            await swap();
          },
        },
      ),
      calls: () => calls,
    };
  };
  const outsideUntouched = async (): Promise<void> => {
    expect((await readdir(outside)).sort()).toEqual(['a.md', 'secret.txt']);
    expect(await readFile(join(outside, 'a.md'), 'utf8')).toBe('TOP SECRET');
    expect(await readFile(join(outside, 'secret.txt'), 'utf8')).toBe('TOP SECRET');
  };

  it('a read does not follow a directory swapped for a symlink', async () => {
    const t = tools('read', swapDir('docs'));
    const result: unknown = await runTool(t.readFile, { path: 'docs/a.md' }, ctx).catch(
      (e: unknown) => e,
    );
    expect(t.calls()).toBe(1);
    expect(result).toMatchObject({ code: 'POLICY_DENIED', details: { rule: 'file-sandbox' } });
  });

  it('a read does not follow a file swapped for a symlink', async () => {
    const t = tools('read', swapFile('docs/a.md'));
    await expect(runTool(t.readFile, { path: 'docs/a.md' }, ctx)).rejects.toMatchObject({
      code: 'POLICY_DENIED',
    });
    expect(t.calls()).toBe(1);
  });

  it('a listing does not follow a directory swapped for a symlink', async () => {
    const t = tools('list', swapDir('docs'));
    await expect(runTool(t.listFiles, { path: 'docs' }, ctx)).rejects.toMatchObject({
      code: 'POLICY_DENIED',
    });
    expect(t.calls()).toBe(1);
  });

  it('a write does not land outside when its directory is swapped for a symlink', async () => {
    await mkdir(join(root, 'out'));
    const t = tools('write', swapDir('out'));
    const result: unknown = await runTool(
      t.writeFile,
      { path: 'out/a.md', content: 'pwned' },
      ctx,
    ).catch((e: unknown) => e);
    expect(t.calls()).toBe(1);
    await outsideUntouched();
    if (procFd) {
      // Written into the directory that was verified, wherever it now is.
      expect(result).toEqual({ path: 'out/a.md', bytes: 5 });
      expect(await readFile(join(root, 'out-moved', 'a.md'), 'utf8')).toBe('pwned');
    } else {
      expect(result).toMatchObject({ code: 'POLICY_DENIED' });
    }
  });

  it('a write replaces a file swapped for a symlink, never writing through it', async () => {
    const t = tools('write', swapFile('docs/a.md'));
    await expect(runTool(t.writeFile, { path: 'docs/a.md', content: 'new' }, ctx)).resolves.toEqual(
      { path: 'docs/a.md', bytes: 3 },
    );
    expect(t.calls()).toBe(1);
    await outsideUntouched();
    expect((await lstat(join(root, 'docs', 'a.md'))).isFile()).toBe(true);
    expect(await readFile(join(root, 'docs', 'a.md'), 'utf8')).toBe('new');
  });
});
