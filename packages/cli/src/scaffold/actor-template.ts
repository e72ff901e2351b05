// The files `reins new actor` writes. Kept Prettier-formatted (printWidth 100, single quotes)
// and lint-clean, so a generated package passes the repository's checks as it is.

/** What the templates are filled with. */
export interface ActorTemplate {
  /** Package folder name, e.g. `reviewer` or `price-check`. */
  name: string;
  /** Workspace folder it lives in, relative to the workspace root (`packages`). */
  dir: string;
  /** Role the actor serves. */
  role: string;
  /** npm package name, e.g. `@reins/reviewer`. */
  packageName: string;
  /** `dependencies` of package.json. */
  dependencies: Record<string, string>;
  /** `devDependencies` of package.json. */
  devDependencies: Record<string, string>;
  /** `engines.node` of package.json. */
  nodeEngine: string;
  /** `extends` of the package's tsconfig.json, or undefined to inline the compiler options. */
  tsconfigExtends: string | undefined;
  /** Paths of the projects the package's tsconfig.json references. */
  references: string[];
}

/** `price-check` → `PriceCheck`. */
export function pascalCase(name: string): string {
  return name
    .split('-')
    .filter(Boolean)
    .map((w) => w[0]?.toUpperCase() + w.slice(1))
    .join('');
}

/** `price-check` → `priceCheck`. */
export function camelCase(name: string): string {
  const p = pascalCase(name);
  return (p[0]?.toLowerCase() ?? '') + p.slice(1);
}

function json(value: unknown): string {
  return `${JSON.stringify(value, null, 2)}\n`;
}

/** Compiler options used when the workspace has no `tsconfig.base.json` to extend. */
const INLINE_COMPILER_OPTIONS = {
  target: 'es2023',
  lib: ['es2023', 'esnext.disposable'],
  module: 'nodenext',
  moduleResolution: 'nodenext',
  strict: true,
  composite: true,
  declaration: true,
  sourceMap: true,
  skipLibCheck: true,
  verbatimModuleSyntax: true,
  types: ['node'],
};

/** The files of a new actor package, by path relative to the package folder. */
export function actorFiles(t: ActorTemplate): Record<string, string> {
  const Name = pascalCase(t.name);
  const name = camelCase(t.name);
  const pkg = {
    name: t.packageName,
    version: '0.1.0',
    private: true,
    description: `Reins actor \`${t.role}\`: typed requests on NATS, traces, halts through AbortSignal.`,
    type: 'module',
    engines: { node: t.nodeEngine },
    bin: { [`reins-${t.name}`]: './dist/main.js' },
    exports: { '.': { types: './dist/index.d.ts', default: './dist/index.js' } },
    main: './dist/index.js',
    types: './dist/index.d.ts',
    files: ['dist'],
    scripts: { build: 'tsc -b', start: 'node dist/main.js' },
    dependencies: t.dependencies,
    devDependencies: t.devDependencies,
  };
  const tsconfig = {
    ...(t.tsconfigExtends ? { extends: t.tsconfigExtends } : {}),
    compilerOptions: {
      ...(t.tsconfigExtends ? {} : INLINE_COMPILER_OPTIONS),
      rootDir: 'src',
      outDir: 'dist',
    },
    include: ['src'],
    references: t.references.map((path) => ({ path })),
  };

  const index = `import { z } from 'zod';
import { ID_PATTERN } from '@reins/protocol';
import { defineActor, type Actor, type Runtime } from '@reins/runtime';

/** The role this actor serves (heartbeats, presence, halts by role). */
export const ${constName(t.name)}_ROLE = '${t.role}';

/** A request to the ${t.role}. Every field is checked before the handler runs. */
export const ${Name}Request = z.object({
  /** The run this work belongs to: a halt of the run aborts it. */
  runId: z.string().regex(ID_PATTERN),
  text: z.string().min(1).max(100_000),
});
export type ${Name}Request = z.infer<typeof ${Name}Request>;

/** The ${t.role}'s reply. */
export const ${Name}Reply = z.object({
  agentId: z.string(),
  words: z.number().int().nonnegative(),
  summary: z.string(),
});
export type ${Name}Reply = z.infer<typeof ${Name}Reply>;

/** The subject the actor serves: \`<prefix>.actor.${t.name}\` (\`reins.v1.actor.${t.name}\`). */
export function ${name}Subject(runtime: Runtime): string {
  return \`\${runtime.subjects.prefix}.actor.${t.name}\`;
}

/** Options of \`start${Name}\`. */
export interface ${Name}Options {
  /** Agent id (default: generated from the role). */
  agentId?: string;
  /** Role (default \`${t.role}\`). */
  role?: string;
}

/**
 * Starts the ${t.role} on \`runtime\`: a queue-group handler of \`${Name}Request\`. The runtime adds
 * heartbeats, presence, halt/pause/resume, coded errors for malformed requests, and SIGTERM
 * draining (with \`handleSignals\` / \`runService\`).
 */
export async function start${Name}(runtime: Runtime, options: ${Name}Options = {}): Promise<Actor> {
  const role = options.role ?? ${constName(t.name)}_ROLE;
  return runtime.start(
    defineActor({
      role,
      ...(options.agentId !== undefined ? { agentId: options.agentId } : {}),
      setup(actor) {
        actor.handle(
          ${name}Subject(runtime),
          ${Name}Request,
          async (req, ctx) => {
            actor.trace(req.runId, 'work.start', { chars: req.text.length });
            // ctx.signal aborts on a halt (this agent, its role, the run, or all) and on
            // shutdown: pass it to anything slow (fetch, child processes, timers).
            ctx.signal.throwIfAborted();
            const words = req.text.split(/\\s+/).filter(Boolean);
            const summary = words.slice(0, 12).join(' ');
            actor.trace(req.runId, 'work.done', { words: words.length });
            return { agentId: actor.agentId, words: words.length, summary };
          },
          { reply: ${Name}Reply, queue: role },
        );
      },
    }),
  );
}
`;

  const main = `#!/usr/bin/env node
// The ${t.role} as a service: NATS_URL, REINS_AGENT_ID, REINS_ROLE from the environment;
// SIGTERM drains in-flight work and exits.
import { z } from 'zod';
import { ServiceEnv, runService } from '@reins/runtime';
import { ${name}Subject, start${Name} } from './index.js';

const Env = ServiceEnv.extend({ REINS_ROLE: z.string().default('${t.role}') });

await runService('reins-${t.name}', Env, async (env, runtime) => {
  const actor = await start${Name}(runtime, {
    role: env.REINS_ROLE,
    ...(env.REINS_AGENT_ID ? { agentId: env.REINS_AGENT_ID } : {}),
  });
  runtime.logger.info(
    { agentId: actor.agentId, subject: ${name}Subject(runtime) },
    '${t.role} ready',
  );
});
`;

  const test = `import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ReinsError } from '@reins/protocol';
import { Runtime, createLogger, decodeReply, subscribeTraces } from '@reins/runtime';
import { startNatsServer } from '@reins/testing';
import { ${Name}Reply, ${Name}Request, ${name}Subject, start${Name} } from '../src/index.js';

const quiet = () => createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' });

describe('${t.role} actor', () => {
  it('answers a typed request and traces its work', async () => {
    await using nats = await startNatsServer();
    await using runtime = await Runtime.connect({ servers: nats.url, logger: quiet() });
    const actor = await start${Name}(runtime);

    const reply = await runtime.request(${name}Subject(runtime), ${Name}Request, ${Name}Reply, {
      runId: 'run-1',
      text: 'the quick brown fox',
    });
    expect(reply).toEqual({ agentId: actor.agentId, words: 4, summary: 'the quick brown fox' });

    await using events = await subscribeTraces(runtime, { runId: 'run-1' });
    const seen: string[] = [];
    for await (const e of events) {
      seen.push(e.event);
      if (e.event === 'work.done') break;
    }
    expect(seen).toEqual(['work.start', 'work.done']);
  });

  it('answers garbage and invalid requests with a coded error and keeps serving', async () => {
    await using nats = await startNatsServer();
    await using runtime = await Runtime.connect({ servers: nats.url, logger: quiet() });
    await start${Name}(runtime);
    const subject = ${name}Subject(runtime);

    const garbage = await runtime.nc
      .request(subject, new TextEncoder().encode('not msgpack'), { timeout: 5000 })
      .then((m) => decodeReply(m, ${Name}Reply))
      .catch((e: unknown) => e);
    expect(garbage).toBeInstanceOf(ReinsError);
    expect((garbage as ReinsError).code).toBe('BAD_REQUEST');

    const invalid = await runtime
      .request(subject, z.unknown(), ${Name}Reply, { runId: 'run-1', text: 42 })
      .catch((e: unknown) => e);
    expect((invalid as ReinsError).code).toBe('BAD_REQUEST');

    const ok = await runtime.request(subject, ${Name}Request, ${Name}Reply, {
      runId: 'run-2',
      text: 'still serving',
    });
    expect(ok.words).toBe(2);
  });
});
`;

  const readme = `# ${t.packageName}

A Reins actor serving role \`${t.role}\` on \`reins.v1.actor.${t.name}\` (made with
\`reins new actor\`).

\`\`\`bash
# build, then run its test against a real nats-server
pnpm exec tsc -b
pnpm exec vitest run ${t.dir}/${t.name}
# run it as a service
NATS_URL=nats://127.0.0.1:4222 node ${t.dir}/${t.name}/dist/main.js
\`\`\`

Edit \`src/index.ts\`: the request and reply schemas and the handler. Call it from code with
\`runtime.request(${name}Subject(runtime), ${Name}Request, ${Name}Reply, { runId, text })\`.
`;

  return {
    'package.json': json(pkg),
    'tsconfig.json': json(tsconfig),
    'src/index.ts': index,
    'src/main.ts': main,
    [`test/${t.name}.int.test.ts`]: test,
    'README.md': readme,
  };
}

/** `price-check` → `PRICE_CHECK`. */
function constName(name: string): string {
  return name.toUpperCase().replace(/-+/g, '_');
}
