import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import {
  lstat,
  mkdir,
  open,
  readdir,
  readlink,
  realpath,
  rename,
  rm,
  stat,
} from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { z } from 'zod';
import {
  NotFoundError,
  PolicyDeniedError,
  ProtocolError,
  ReinsError,
  ToolFailedError,
} from '@reins/protocol';
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

/** Internal seams for tests; not exported from the package. */
export interface FileToolsHooks {
  /** Called after a path was checked and before it is opened (to swap in a symlink there). */
  beforeOpen?: (op: 'read' | 'write' | 'list', rel: string) => Promise<void>;
  /** Force the portable path when false (default: use /proc/self/fd when it works). */
  procFd?: boolean;
}

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_DIRECTORY } = constants;
// Not every platform has these; 0 leaves the flag out rather than failing.
const O_NOFOLLOW = constants.O_NOFOLLOW ?? 0;
const O_NONBLOCK = constants.O_NONBLOCK ?? 0;

/** An opened, verified directory: names are created relative to it, not to a path. */
interface DirHandle {
  handle: FileHandle;
  /** Where it was when verified. */
  path: string;
  /** Names resolve through /proc/self/fd/<fd>, so swapping the path does not move them. */
  proc: boolean;
}

function at(dir: DirHandle, name: string): string {
  return dir.proc ? `/proc/self/fd/${dir.handle.fd}/${name}` : join(dir.path, name);
}

/**
 * Where an opened file really is. On Linux the kernel says (/proc/self/fd); elsewhere the path
 * is resolved again and must name the same file (dev, inode) as the handle, which narrows the
 * window between check and open but cannot close it.
 */
async function openedPath(handle: FileHandle, path: string, proc: boolean): Promise<string> {
  if (proc) return readlink(`/proc/self/fd/${handle.fd}`);
  const real = await realpath(path);
  const [opened, named] = await Promise.all([handle.stat(), stat(real)]);
  if (opened.dev !== named.dev || opened.ino !== named.ino) return '\0changed';
  return real;
}

/**
 * `read_file`, `write_file` and `list_files` confined to `root`. Absolute paths, `..` escapes and
 * symlinks resolving outside the root are refused with `PolicyDeniedError` (realpath checks on
 * every call); a missing file is `NotFoundError`. The check cannot be raced by swapping in a
 * symlink: files are opened with O_NOFOLLOW and the opened handle is verified to lie inside the
 * root before it is read or listed; writes walk down from the root one opened directory at a
 * time and create the temp file (O_EXCL|O_NOFOLLOW) and rename it relative to the verified
 * directory handle (via /proc/self/fd on Linux; elsewhere by re-resolving and comparing
 * dev/inode, which narrows the window but cannot close it). Writes are atomic (temp file +
 * rename) and create parent directories inside the sandbox. Throws `ProtocolError` if `root` is
 * not a directory.
 */
export function createFileTools(options: FileToolsOptions): FileTools {
  return createFileToolsWithHooks(options, {});
}

/** `createFileTools` with test seams (see `FileToolsHooks`). */
export function createFileToolsWithHooks(
  options: FileToolsOptions,
  hooks: FileToolsHooks,
): FileTools {
  const maxReadBytes = options.maxReadBytes ?? 1_048_576;
  const maxWriteChars = options.maxWriteChars ?? 1_048_576;
  const maxEntries = options.maxEntries ?? 1000;
  let proc = false;
  let rootPromise: Promise<string> | undefined;
  const root = (): Promise<string> => {
    rootPromise ??= (async () => {
      try {
        const real = await realpath(options.root);
        const handle = await open(real, O_RDONLY | O_DIRECTORY);
        try {
          // /proc/self/fd gives openat-like paths on Linux; check it names the root we opened.
          proc =
            hooks.procFd !== false &&
            (await readlink(`/proc/self/fd/${handle.fd}`).catch(() => '')) === real;
        } finally {
          await handle.close();
        }
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

  /**
   * Opens a checked path without following a final symlink, then verifies where the opened file
   * really is: a symlink swapped in after the check is refused, never read.
   */
  const openChecked = async (
    op: 'read' | 'list',
    path: string,
    rel: string,
    resolved: string,
    flags: number,
  ): Promise<FileHandle> => {
    const real = await root();
    await hooks.beforeOpen?.(op, rel);
    let handle: FileHandle;
    try {
      handle = await open(resolved, flags | O_NOFOLLOW | O_NONBLOCK);
    } catch (err) {
      // With O_DIRECTORY a final symlink gives ENOTDIR rather than ELOOP.
      const code = errno(err);
      if (
        code === 'ELOOP' ||
        (code === 'ENOTDIR' && (await lstat(resolved).catch(() => null))?.isSymbolicLink() === true)
      ) {
        throw denied(path, 'it became a symlink while being opened');
      }
      if (errno(err) === 'ENOENT') {
        throw new NotFoundError(`no such file or directory: ${rel}`, { details: { path: rel } });
      }
      if (errno(err) === 'ENOTDIR')
        throw new ProtocolError(`not a directory: ${rel}`, { details: { path: rel } });
      throw err;
    }
    const where = await openedPath(handle, resolved, proc).catch(() => '\0gone');
    if (!inside(real, where)) {
      await handle.close();
      throw denied(path, 'it resolved outside the sandbox root when opened (a symlink swap?)');
    }
    return handle;
  };

  /** Opens a directory (following symlinks) and verifies it lies inside the root. */
  const openDir = async (path: string, dirPath: string): Promise<DirHandle> => {
    const real = await root();
    const handle = await open(dirPath, O_RDONLY | O_DIRECTORY | O_NONBLOCK);
    const where = await openedPath(handle, dirPath, proc).catch(() => '\0gone');
    if (!inside(real, where)) {
      await handle.close();
      throw denied(path, 'its directory resolves (through a symlink) outside the sandbox root');
    }
    return { handle, path: where, proc };
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
      const handle = await openChecked('read', path, rel, resolved, O_RDONLY);
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
      const parts = relative(real, target).split(sep);
      const name = parts.pop() ?? '';
      // Walk down from the root one opened directory at a time: each step is created and opened
      // relative to the directory already verified, so no path swap can lead outside.
      let dir = await openDir(path, real);
      try {
        for (const part of parts) {
          signal.throwIfAborted();
          const next = at(dir, part);
          try {
            await mkdir(next);
          } catch (err) {
            if (errno(err) === 'ENOTDIR')
              throw new ProtocolError(`not a directory on the way to ${rel}`, {
                details: { path: rel },
              });
            if (errno(err) !== 'EEXIST') throw err;
          }
          const child = await openDir(path, next).catch((err: unknown) => {
            if (errno(err) === 'ENOTDIR')
              throw new ProtocolError(`not a directory on the way to ${rel}`, {
                details: { path: rel },
              });
            throw err;
          });
          await dir.handle.close();
          dir = child;
        }
        const finalPath = at(dir, name);
        try {
          const st = await lstat(finalPath);
          if (st.isDirectory())
            throw new ProtocolError(`is a directory: ${rel}`, { details: { path: rel } });
          // Replacing a symlink never writes through it (rename swaps the link itself), but one
          // pointing outside is refused to keep the rule simple to state.
          if (st.isSymbolicLink() && !inside(real, await realpath(finalPath).catch(() => '/'))) {
            throw denied(path, 'it is a symlink pointing outside the sandbox root');
          }
        } catch (err) {
          if (errno(err) !== 'ENOENT') throw err;
        }
        signal.throwIfAborted();
        await hooks.beforeOpen?.('write', rel);
        const data = Buffer.from(content, 'utf8');
        const temp = at(dir, `.${randomBytes(6).toString('hex')}.reins-tmp`);
        let created = false;
        try {
          const handle = await open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0o666);
          created = true;
          try {
            const where = await openedPath(handle, temp, dir.proc).catch(() => '\0gone');
            if (!inside(real, where)) {
              throw denied(path, 'its directory moved outside the sandbox root (a symlink swap?)');
            }
            await handle.writeFile(data, { signal });
          } finally {
            await handle.close();
          }
          await rename(temp, finalPath);
        } catch (err) {
          if (created) await rm(temp, { force: true });
          if (signal.aborted || err instanceof ReinsError) throw err;
          throw new ToolFailedError(`cannot write ${rel}: ${(err as Error).message}`, {
            cause: err,
          });
        }
        return { path: rel, bytes: data.length };
      } finally {
        await dir.handle.close();
      }
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
      const handle = await openChecked('list', path, rel, resolved, O_RDONLY | O_DIRECTORY);
      try {
        // Through the opened handle on Linux: the listing is of the directory that was verified.
        const dirPath = proc ? `/proc/self/fd/${handle.fd}` : resolved;
        const dirents = await readdir(dirPath, { withFileTypes: true });
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
          const size = type === 'file' ? (await lstat(join(dirPath, d.name))).size : 0;
          entries.push({ name: d.name, type, size });
        }
        return { path: rel, entries, truncated: dirents.length > maxEntries };
      } finally {
        await handle.close();
      }
    },
  });

  return {
    readFile: readFileTool,
    writeFile: writeFileTool,
    listFiles: listFilesTool,
    tools: [readFileTool, writeFileTool, listFilesTool],
  };
}
