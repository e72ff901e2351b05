import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { lstat, mkdir, open, readdir, realpath, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve, sep } from 'node:path';
import { z } from 'zod';
import type { ReinsError } from '@reins/protocol';
import { NotFoundError, PolicyDeniedError, ProtocolError, ToolFailedError } from '@reins/protocol';
import { defineTool } from './tool.js';
import type { Tool } from './tool.js';

/** Options of `createFileTools`. */
export interface FileToolsOptions {
  /** The sandbox directory; it must exist. Nothing outside it is read, listed or written. */
  root: string;
  /** Largest read, in bytes; longer files are cut and flagged `truncated` (default 1 MiB). */
  maxReadBytes?: number;
  /** Largest write, in characters (default 1 MiB). */
  maxWriteChars?: number;
  /** Most entries `list_files` returns (default 1000). */
  maxEntries?: number;
}

const RelPath = z
  .string()
  .min(1)
  .max(1024)
  .describe('path relative to the sandbox root, with / separators');

const ReadInput = z.object({ path: RelPath });
const ReadOutput = z.object({
  path: z.string(),
  content: z.string(),
  bytes: z.number().int().nonnegative(),
  truncated: z.boolean(),
});
const ListInput = z.object({ path: RelPath.default('.') });
const Entry = z.object({
  name: z.string(),
  type: z.enum(['file', 'dir', 'symlink', 'other']),
  size: z.number().int().nonnegative(),
});
const ListOutput = z.object({ path: z.string(), entries: z.array(Entry), truncated: z.boolean() });
const WriteOutput = z.object({ path: z.string(), bytes: z.number().int().nonnegative() });

/** The three sandboxed file tools, and all of them as a list. */
export interface FileTools {
  readFile: Tool<typeof ReadInput, typeof ReadOutput>;
  writeFile: Tool<z.ZodObject<{ path: typeof RelPath; content: z.ZodString }>, typeof WriteOutput>;
  listFiles: Tool<typeof ListInput, typeof ListOutput>;
  tools: readonly [
    Tool<typeof ReadInput, typeof ReadOutput>,
    Tool<z.ZodObject<{ path: typeof RelPath; content: z.ZodString }>, typeof WriteOutput>,
    Tool<typeof ListInput, typeof ListOutput>,
  ];
}

function denied(path: string, why: string): ReinsError {
  return new PolicyDeniedError(`path ${JSON.stringify(path.slice(0, 200))} refused: ${why}`, {
    details: { rule: 'file-sandbox', path: path.slice(0, 1024) },
  });
}

function inside(root: string, target: string): boolean {
  const rel = relative(root, target);
  return rel === '' || (!rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel));
}

function errno(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string'
    ? err.code
    : undefined;
}

/**
 * `read_file`, `write_file` and `list_files` confined to `root`. Absolute paths, `..` escapes and
 * symlinks resolving outside the root are refused with `PolicyDeniedError` (realpath checks on
 * every call); a missing file is `NotFoundError`. Writes are atomic (temp file + rename) and
 * create parent directories inside the sandbox. Throws `ProtocolError` if `root` is not a directory.
 */
export function createFileTools(options: FileToolsOptions): FileTools {
  const maxReadBytes = options.maxReadBytes ?? 1_048_576;
  const maxWriteChars = options.maxWriteChars ?? 1_048_576;
  const maxEntries = options.maxEntries ?? 1000;
  let rootPromise: Promise<string> | undefined;
  const root = (): Promise<string> => {
    rootPromise ??= (async () => {
      try {
        const real = await realpath(options.root);
        if (!(await lstat(real)).isDirectory()) throw new Error('not a directory');
        return real;
      } catch (err) {
        rootPromise = undefined;
        throw new ProtocolError(
          `file tools root ${JSON.stringify(options.root)} is not a directory`,
          {
            cause: err,
          },
        );
      }
    })();
    return rootPromise;
  };

  /** The lexical target inside the root, refusing absolute paths and `..` escapes. */
  const lexical = async (path: string): Promise<{ real: string; target: string; rel: string }> => {
    if (path.includes('\0')) throw denied(path, 'contains a NUL byte');
    if (
      isAbsolute(path) ||
      path.startsWith('/') ||
      path.startsWith('\\') ||
      /^[A-Za-z]:/.test(path)
    ) {
      throw denied(path, 'absolute paths are not allowed; use a path relative to the sandbox root');
    }
    const real = await root();
    const target = resolve(real, path);
    if (!inside(real, target)) throw denied(path, 'it escapes the sandbox root');
    return { real, target, rel: relative(real, target).split(sep).join('/') || '.' };
  };

  /** Resolves symlinks of an existing path and checks the result is still inside the root. */
  const existing = async (path: string): Promise<{ resolved: string; rel: string }> => {
    const { real, target, rel } = await lexical(path);
    let resolved: string;
    try {
      resolved = await realpath(target);
    } catch (err) {
      if (errno(err) === 'ENOENT' || errno(err) === 'ENOTDIR') {
        throw new NotFoundError(`no such file or directory: ${rel}`, { details: { path: rel } });
      }
      throw err;
    }
    if (!inside(real, resolved))
      throw denied(path, 'it resolves (through a symlink) outside the sandbox root');
    return { resolved, rel };
  };

  const readFileTool = defineTool({
    name: 'read_file',
    description: `Read a UTF-8 text file inside the sandbox (at most ${maxReadBytes} bytes; longer files are truncated).`,
    input: ReadInput,
    output: ReadOutput,
    effect: 'read',
    idempotent: true,
    timeoutMs: 10_000,
    async run({ path }, { signal }) {
      const { resolved, rel } = await existing(path);
      signal.throwIfAborted();
      const handle = await open(resolved, constants.O_RDONLY | (constants.O_NOFOLLOW ?? 0));
      try {
        const stat = await handle.stat();
        if (!stat.isFile())
          throw new ProtocolError(`not a regular file: ${rel}`, { details: { path: rel } });
        const length = Math.min(stat.size, maxReadBytes);
        const buffer = Buffer.alloc(length);
        let read = 0;
        while (read < length) {
          signal.throwIfAborted();
          const { bytesRead } = await handle.read(buffer, read, length - read, read);
          if (bytesRead === 0) break;
          read += bytesRead;
        }
        return {
          path: rel,
          content: buffer.subarray(0, read).toString('utf8'),
          bytes: stat.size,
          truncated: stat.size > read,
        };
      } finally {
        await handle.close();
      }
    },
  });

  const writeFileTool = defineTool({
    name: 'write_file',
    description:
      'Write a UTF-8 text file inside the sandbox, atomically, replacing it if it exists.',
    input: z.object({ path: RelPath, content: z.string().max(maxWriteChars) }),
    output: WriteOutput,
    effect: 'write',
    idempotent: true,
    timeoutMs: 10_000,
    async run({ path, content }, { signal }) {
      const { real, target, rel } = await lexical(path);
      if (target === real) throw denied(path, 'cannot write the sandbox root itself');
      // The nearest existing ancestor must resolve inside the root before anything is created.
      let ancestor = dirname(target);
      for (;;) {
        try {
          await lstat(ancestor);
          break;
        } catch (err) {
          if (errno(err) !== 'ENOENT') throw err;
          ancestor = dirname(ancestor);
        }
      }
      if (!inside(real, await realpath(ancestor))) {
        throw denied(path, 'its directory resolves (through a symlink) outside the sandbox root');
      }
      await mkdir(dirname(target), { recursive: true });
      const parent = await realpath(dirname(target));
      if (!inside(real, parent))
        throw denied(path, 'its directory resolves outside the sandbox root');
      const finalPath = join(parent, relative(dirname(target), target));
      try {
        const st = await lstat(finalPath);
        if (st.isDirectory())
          throw new ProtocolError(`is a directory: ${rel}`, { details: { path: rel } });
        if (st.isSymbolicLink() && !inside(real, await realpath(finalPath).catch(() => '/'))) {
          throw denied(path, 'it is a symlink pointing outside the sandbox root');
        }
      } catch (err) {
        if (errno(err) !== 'ENOENT') throw err;
      }
      signal.throwIfAborted();
      const data = Buffer.from(content, 'utf8');
      const temp = join(parent, `.${randomBytes(6).toString('hex')}.reins-tmp`);
      try {
        await writeFile(temp, data, { flag: 'wx', signal });
        await rename(temp, finalPath);
      } catch (err) {
        await rm(temp, { force: true });
        if (signal.aborted) throw err;
        throw new ToolFailedError(`cannot write ${rel}: ${(err as Error).message}`, { cause: err });
      }
      return { path: rel, bytes: data.length };
    },
  });

  const listFilesTool = defineTool({
    name: 'list_files',
    description:
      'List the entries of a directory inside the sandbox (name, type, size), sorted by name.',
    input: ListInput,
    output: ListOutput,
    effect: 'read',
    idempotent: true,
    timeoutMs: 10_000,
    async run({ path }, { signal }) {
      const { resolved, rel } = await existing(path);
      const dirents = await readdir(resolved, { withFileTypes: true }).catch((err: unknown) => {
        if (errno(err) === 'ENOTDIR')
          throw new ProtocolError(`not a directory: ${rel}`, { details: { path: rel } });
        throw err;
      });
      dirents.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      const entries: z.input<typeof Entry>[] = [];
      for (const d of dirents.slice(0, maxEntries)) {
        signal.throwIfAborted();
        if (d.name.endsWith('.reins-tmp')) continue;
        const type = d.isSymbolicLink()
          ? 'symlink'
          : d.isFile()
            ? 'file'
            : d.isDirectory()
              ? 'dir'
              : 'other';
        const size = type === 'file' ? (await lstat(join(resolved, d.name))).size : 0;
        entries.push({ name: d.name, type, size });
      }
      return { path: rel, entries, truncated: dirents.length > maxEntries };
    },
  });

  return {
    readFile: readFileTool,
    writeFile: writeFileTool,
    listFiles: listFilesTool,
    tools: [readFileTool, writeFileTool, listFilesTool],
  };
}
