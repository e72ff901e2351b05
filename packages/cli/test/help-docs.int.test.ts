// What `--help` says, what completion offers and what docs/cli.md documents come from one place:
// the command definitions. These tests keep the three from drifting apart.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';
import { reins } from './cli-process.js';

const DOCS = readFileSync(fileURLToPath(new URL('../../../docs/cli.md', import.meta.url)), 'utf8');
const README = readFileSync(fileURLToPath(new URL('../../../README.md', import.meta.url)), 'utf8');

/** Every command path (`reins audit tail`) with its options, from the generated bash script. */
function commandsOf(bash: string): Map<string, string[]> {
  const table = (name: string) =>
    new Map(
      [
        ...bash
          .split(`declare -A ${name}=(`)[1]!
          .split('\n)')[0]!
          .matchAll(/\['([^']+)'\]='([^']*)'/g),
      ].map((m) => [m[1]!, m[2]!.split(' ').filter(Boolean)]),
    );
  const opts = table('_reins_opts');
  return new Map([...opts].filter(([path]) => path !== 'reins'));
}

describe('help, completion and docs come from the command definitions', () => {
  let bash = '';
  let commands = new Map<string, string[]>();

  beforeAll(async () => {
    const r = await reins(['completion', 'bash']);
    expect(r.code).toBe(0);
    bash = r.stdout;
    commands = commandsOf(bash);
    expect(commands.size).toBeGreaterThan(20);
  });

  it('every command’s --help ends with two or three examples of itself', async () => {
    const paths = [...commands.keys()];
    const helps = new Map<string, Awaited<ReturnType<typeof reins>>>();
    // Four at a time: each is a process start.
    for (let i = 0; i < paths.length; i += 4) {
      const batch = paths.slice(i, i + 4);
      const results = await Promise.all(
        batch.map((p) => reins([...p.split(' ').slice(1), '--help'])),
      );
      batch.forEach((p, j) => helps.set(p, results[j]!));
    }
    for (const path of paths) {
      const r = helps.get(path)!;
      expect(r.code, path).toBe(0);
      const tail = r.stdout.trimEnd().split('\nExamples:\n')[1];
      expect(tail, path).toBeDefined();
      const lines = (tail ?? '').split('\n');
      expect(lines.length, path).toBeGreaterThanOrEqual(2);
      expect(lines.length, path).toBeLessThanOrEqual(3);
      for (const l of lines) expect(l, path).toMatch(new RegExp(`^ {2}${path}( |$)`));
    }
  });

  it('docs/cli.md documents every command and every option --help lists', () => {
    for (const [path, options] of commands) {
      const name = path.split(' ')[1] ?? '';
      expect(DOCS, `${name} has a section`).toMatch(
        new RegExp(`^## .*\`reins [^\`]*\\b${name}\\b`, 'm'),
      );
      for (const o of options.filter((x) => x.startsWith('--') && x !== '--help')) {
        expect(DOCS, `${path} ${o}`).toContain(o);
      }
    }
  });

  it('the README’s reins commands name commands and options that exist', () => {
    const used = README.split('\n')
      .map((l) => l.replace(/#.*$/, '').trim())
      .flatMap((l) => l.split(/;\s*/))
      .filter((l) => l.startsWith('reins '));
    expect(used.length).toBeGreaterThan(5);
    for (const line of used) {
      const words = line.split(/\s+/);
      let path = 'reins';
      for (const w of words.slice(1)) {
        if (commands.has(`${path} ${w}`)) path = `${path} ${w}`;
        else break;
      }
      expect(path, line).not.toBe('reins');
      for (const flag of words.filter((w) => w.startsWith('-'))) {
        expect(commands.get(path), `${line}: ${flag}`).toContain(flag);
      }
    }
  });

  it('bash completes commands, subcommands and options, and skips option values', () => {
    const dir = mkdtempSync(join(tmpdir(), 'reins-completion-'));
    const script = join(dir, 'reins.bash');
    writeFileSync(script, bash);
    const complete = (...words: string[]) =>
      execFileSync(
        'bash',
        [
          '-c',
          `source "$1"; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _reins; echo "\${COMPREPLY[*]}"`,
          'bash',
          script,
        ],
        { encoding: 'utf8' },
      ).trim();
    expect(complete('reins', 'ha')).toBe('halt');
    expect(complete('reins', 'audit', 'v')).toBe('verify');
    expect(complete('reins', 'audit', 'tail', '--wr')).toBe('--writer');
    expect(complete('reins', 'run', '--role', '')).toBe('');
    expect(complete('reins', 'completion', '')).toBe('');
    rmSync(dir, { recursive: true, force: true });
  });

  it('zsh and fish scripts cover every command and option', async () => {
    for (const shell of ['zsh', 'fish']) {
      const r = await reins(['completion', shell]);
      expect(r.code).toBe(0);
      for (const [path, options] of commands) {
        expect(r.stdout, `${shell} ${path}`).toContain(path.split(' ').at(-1));
        for (const o of options) {
          const name = o.replace(/^--?/, '');
          expect(r.stdout, `${shell} ${path} ${o}`).toContain(name);
        }
      }
    }
    const bad = await reins(['completion', 'tcsh']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('one of: bash, zsh, fish');
  });
});
