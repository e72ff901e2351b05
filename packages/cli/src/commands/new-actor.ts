import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ID_PATTERN } from '@reins/protocol';
import { CliError, ExitCode, usageError } from '../errors.js';
import { createStyle, printJson, println } from '../output.js';
import { actorFiles, type ActorTemplate } from '../scaffold/actor-template.js';

/** Options of `reins new actor`. */
export interface NewActorOptions {
  role?: string;
  /** Workspace folder, relative to the workspace root (default `packages`). */
  dir?: string;
  /** commander's `--no-install`: false skips `pnpm install`. */
  install?: boolean;
  json?: boolean;
}

/** What `reins new actor` did (the `--json` output). */
export interface NewActorResult {
  package: string;
  role: string;
  /** Workspace root. */
  root: string;
  /** The new package's folder, relative to the root. */
  path: string;
  files: string[];
  /** Whether a reference was added to the root tsconfig.json. */
  tsconfigReference: boolean;
  /** The glob added to pnpm-workspace.yaml, if the folder was not covered. */
  workspaceGlob: string | undefined;
  installed: boolean;
  next: string[];
}

/** Valid names of new packages: `[a-z][a-z0-9-]{0,40}`. */
export const ACTOR_NAME = /^[a-z][a-z0-9-]{0,40}$/;

/** Versions used when the workspace does not pin them (the ones this CLI is built with). */
const FALLBACK_VERSIONS: Record<string, string> = { zod: '^4.6.7', '@reins/runtime': '^0.1.0' };

/** The nearest folder at or above `from` with a `pnpm-workspace.yaml`. */
export function findWorkspaceRoot(from: string): string | undefined {
  let dir = resolve(from);
  for (;;) {
    if (existsSync(join(dir, 'pnpm-workspace.yaml'))) return dir;
    const up = dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
}

/** The `packages:` globs of a pnpm-workspace.yaml (simple list form). */
export function workspaceGlobs(yaml: string): string[] {
  const globs: string[] = [];
  let inPackages = false;
  for (const line of yaml.split('\n')) {
    if (/^packages:\s*$/.test(line)) {
      inPackages = true;
      continue;
    }
    if (!inPackages) continue;
    const item = /^\s+-\s+['"]?([^'"#]+?)['"]?\s*(#.*)?$/.exec(line);
    if (item?.[1]) globs.push(item[1]);
    else if (/^\S/.test(line)) inPackages = false;
  }
  return globs;
}

interface PackageJson {
  name?: string;
  engines?: { node?: string };
  dependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
}

function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

/** Workspace packages by name → folder (globs `dir/*` and plain folders; negations ignored). */
export function workspacePackages(root: string, globs: readonly string[]): Map<string, string> {
  const found = new Map<string, string>();
  const add = (dir: string) => {
    const pkg = readJson<PackageJson>(join(dir, 'package.json'));
    if (pkg?.name) found.set(pkg.name, dir);
  };
  for (const glob of globs) {
    if (glob.startsWith('!')) continue;
    if (glob.endsWith('/*') && !glob.slice(0, -2).includes('*')) {
      const base = join(root, glob.slice(0, -2));
      let entries: string[];
      try {
        entries = readdirSync(base);
      } catch {
        continue;
      }
      for (const e of entries) {
        const dir = join(base, e);
        if (statSync(dir, { throwIfNoEntry: false })?.isDirectory()) add(dir);
      }
    } else if (!glob.includes('*')) {
      add(join(root, glob));
    }
  }
  return found;
}

/** `path` relative to `from`, with forward slashes and a leading `./` or `../`. */
function rel(from: string, to: string): string {
  const r = relative(from, to).split(sep).join('/');
  return r.startsWith('.') ? r : `./${r}`;
}

/** Adds `{ path }` to the references of the root tsconfig.json, before examples and bench. */
async function addReference(root: string, path: string): Promise<boolean> {
  const file = join(root, 'tsconfig.json');
  if (!existsSync(file)) return false;
  let config: { references?: { path: string }[] } & Record<string, unknown>;
  try {
    config = JSON.parse(await readFile(file, 'utf8')) as typeof config;
  } catch {
    return false; // comments or other JSONC: the caller says to add it by hand
  }
  const refs = config.references ?? [];
  if (refs.some((r) => r.path === path)) return true;
  const at = refs.findIndex((r) => r.path.startsWith('examples/') || r.path === 'bench');
  refs.splice(at < 0 ? refs.length : at, 0, { path });
  config.references = refs;
  await writeFile(file, `${JSON.stringify(config, null, 2)}\n`);
  return true;
}

/** Adds `  - <dir>/*` to pnpm-workspace.yaml when no glob covers the folder; returns it. */
async function coverInWorkspace(root: string, dir: string): Promise<string | undefined> {
  const file = join(root, 'pnpm-workspace.yaml');
  const yaml = await readFile(file, 'utf8');
  const globs = workspaceGlobs(yaml);
  const glob = `${dir}/*`;
  if (globs.includes(glob) || globs.includes(`${dir}/**`)) return undefined;
  const lines = yaml.split('\n');
  const at = lines.findIndex((l) => /^packages:\s*$/.test(l));
  if (at < 0) lines.unshift('packages:', `  - ${glob}`);
  else lines.splice(at + 1, 0, `  - ${glob}`);
  await writeFile(file, lines.join('\n'));
  return glob;
}

/** The part of Prettier's API used here. */
interface PrettierApi {
  format(source: string, options: Record<string, unknown>): Promise<string>;
  resolveConfig(file: string): Promise<Record<string, unknown> | null>;
}

/**
 * Formats `files` with the workspace's own Prettier and configuration, when it has one (so the
 * generated code passes its `prettier --check`). Returns false when there is no Prettier.
 */
async function formatWithPrettier(root: string, files: readonly string[]): Promise<boolean> {
  let prettier: PrettierApi | undefined;
  try {
    const entry = createRequire(join(root, 'package.json')).resolve('prettier');
    // The CommonJS entry: its API is the default export.
    const mod = (await import(pathToFileURL(entry).href)) as Partial<PrettierApi> & {
      default?: PrettierApi;
    };
    prettier =
      typeof mod.format === 'function' && typeof mod.resolveConfig === 'function'
        ? (mod as PrettierApi)
        : mod.default;
  } catch {
    return false;
  }
  if (typeof prettier?.format !== 'function') return false;
  try {
    for (const file of files) {
      const config = (await prettier.resolveConfig(file)) ?? {};
      const text = await readFile(file, 'utf8');
      await writeFile(file, await prettier.format(text, { ...config, filepath: file }));
    }
  } catch {
    return false; // unformatted code still works
  }
  return true;
}

function runPnpmInstall(root: string): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn('pnpm', ['install'], {
      cwd: root,
      // pnpm's progress goes to stderr: stdout stays clean for --json.
      stdio: ['ignore', process.stderr, process.stderr],
    });
    child.once('error', (err: NodeJS.ErrnoException) =>
      reject(
        new CliError(
          err.code === 'ENOENT' ? 'pnpm is not on PATH' : `pnpm install: ${err.message}`,
          {
            hint: 'install pnpm (`npm install -g pnpm`) and run `pnpm install` in the workspace root',
          },
        ),
      ),
    );
    child.once('exit', (code) =>
      code === 0
        ? resolvePromise()
        : reject(
            new CliError(`pnpm install failed (exit ${String(code)})`, {
              hint: 'the package files are written; fix the error above and run `pnpm install`',
            }),
          ),
    );
  });
}

/**
 * `reins new actor <name>`: writes `<dir>/<name>` (package `@reins/<name>`) with a working
 * actor (`src/index.ts`), a runnable service (`src/main.ts`), a test against nats-server,
 * package.json and tsconfig.json; adds the project to the root tsconfig.json references (and the
 * folder to pnpm-workspace.yaml when no glob covers it); runs `pnpm install` unless
 * `--no-install`. Invalid or taken names are usage errors (exit 2).
 */
export async function newActorCommand(name: string, options: NewActorOptions): Promise<ExitCode> {
  if (!ACTOR_NAME.test(name)) {
    throw usageError(
      `invalid actor name ${JSON.stringify(name.slice(0, 80))}`,
      'use 1-41 characters: a lower-case letter, then lower-case letters, digits or dashes (e.g. reviewer)',
    );
  }
  const role = options.role ?? name;
  if (!ID_PATTERN.test(role)) {
    throw usageError(
      `invalid role ${JSON.stringify(role.slice(0, 80))}`,
      'roles are 1-64 characters of A-Z a-z 0-9 _ -',
    );
  }
  const root = findWorkspaceRoot(process.cwd());
  if (!root) {
    throw usageError(
      `no pnpm workspace at or above ${process.cwd()}`,
      'run `reins new actor` inside your monorepo (the folder with pnpm-workspace.yaml)',
    );
  }
  const dir = (options.dir ?? 'packages').replace(/\/+$/, '');
  const target = resolve(root, dir, name);
  if (isAbsolute(dir) || !target.startsWith(root + sep) || dir === '') {
    throw usageError(`--dir must be a folder inside the workspace, not ${JSON.stringify(dir)}`);
  }
  const packageName = `@reins/${name}`;
  const globs = workspaceGlobs(await readFile(join(root, 'pnpm-workspace.yaml'), 'utf8'));
  const packages = workspacePackages(root, globs);
  if (existsSync(target)) {
    throw usageError(
      `${rel(root, target).slice(2)} already exists`,
      'choose another name, or remove the folder first',
    );
  }
  const taken = packages.get(packageName);
  if (taken) {
    throw usageError(
      `package ${packageName} already exists in ${rel(root, taken).slice(2)}`,
      'choose another name',
    );
  }

  // Versions and references: the workspace's own packages when it has them (the Reins repo).
  const rootPkg = readJson<PackageJson>(join(root, 'package.json')) ?? {};
  const runtimePkg = packages.get('@reins/runtime');
  const runtimeDeps = runtimePkg
    ? (readJson<PackageJson>(join(runtimePkg, 'package.json'))?.dependencies ?? {})
    : {};
  const versionOf = (dep: string): string =>
    packages.has(dep)
      ? 'workspace:*'
      : (runtimeDeps[dep] ??
        rootPkg.dependencies?.[dep] ??
        rootPkg.devDependencies?.[dep] ??
        FALLBACK_VERSIONS[dep] ??
        FALLBACK_VERSIONS['@reins/runtime'] ??
        '*');
  const template: ActorTemplate = {
    name,
    dir,
    role,
    packageName,
    dependencies: {
      '@reins/protocol': versionOf('@reins/protocol'),
      '@reins/runtime': versionOf('@reins/runtime'),
      zod: versionOf('zod'),
    },
    devDependencies: { '@reins/testing': versionOf('@reins/testing') },
    nodeEngine: rootPkg.engines?.node ?? '>=22.12',
    tsconfigExtends: existsSync(join(root, 'tsconfig.base.json'))
      ? rel(target, join(root, 'tsconfig.base.json'))
      : undefined,
    references: ['@reins/protocol', '@reins/runtime']
      .map((p) => packages.get(p))
      .filter((p): p is string => p !== undefined && existsSync(join(p, 'tsconfig.json')))
      .map((p) => rel(target, p)),
  };

  const files = actorFiles(template);
  for (const [file, text] of Object.entries(files)) {
    const path = join(target, file);
    await mkdir(dirname(path), { recursive: true });
    await writeFile(path, text, { flag: 'wx' });
  }
  const path = rel(root, target).slice(2);
  const tsconfigReference = await addReference(root, path);
  const workspaceGlob = await coverInWorkspace(root, dir);
  await formatWithPrettier(root, [
    ...Object.keys(files).map((f) => join(target, f)),
    ...(tsconfigReference ? [join(root, 'tsconfig.json')] : []),
  ]);

  const s = createStyle(process.stderr);
  let installed = false;
  if (options.install !== false) {
    process.stderr.write(`${s.dim('running pnpm install…')}\n`);
    await runPnpmInstall(root);
    installed = true;
  }
  const next = [
    ...(installed ? [] : ['pnpm install']),
    'pnpm exec tsc -b',
    `pnpm exec vitest run ${path}`,
    `NATS_URL=nats://127.0.0.1:4222 node ${path}/dist/main.js`,
  ];
  const result: NewActorResult = {
    package: packageName,
    role,
    root,
    path,
    files: Object.keys(files).map((f) => `${path}/${f}`),
    tsconfigReference,
    workspaceGlob,
    installed,
    next,
  };
  if (options.json) {
    printJson(result);
    return ExitCode.ok;
  }
  const o = createStyle();
  println(`${o.green('✓')} created ${o.bold(packageName)} ${o.dim(`(role ${role})`)} in ${path}/`);
  for (const f of result.files) println(`    ${f}`);
  println(
    tsconfigReference
      ? `${o.green('✓')} added { "path": "${path}" } to the references of tsconfig.json`
      : `${o.yellow('!')} add { "path": "${path}" } to the references of your root tsconfig.json`,
  );
  if (workspaceGlob) println(`${o.green('✓')} added ${workspaceGlob} to pnpm-workspace.yaml`);
  println(
    installed
      ? `${o.green('✓')} ran pnpm install`
      : `${o.dim('·')} skipped pnpm install (--no-install)`,
  );
  println('');
  println(o.bold('next:'));
  for (const n of next) println(`  ${n}`);
  return ExitCode.ok;
}
