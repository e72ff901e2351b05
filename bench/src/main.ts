import { cpus, platform } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { natsServerVersion, startNatsServer } from '@reins/testing';
import { markdown, memoryDelta, memorySample, writeReport } from './report.js';
import { suites } from './suites/index.js';
import type { Check, Figure, RunReport, SuiteContext, SuiteReport } from './types.js';

const USAGE = `usage: node bench/dist/main.js [--quick] [--only <suite>[,<suite>…]] [--skip-postgres]
  --quick          smaller iteration counts (the smoke run)
  --only           run only these suites
  --skip-postgres  leave out the peers suite's LangGraph + PostgresSaver row (no cluster started)
suites: ${suites.map((s) => s.name).join(', ')}`;

const RESULTS_DIR = fileURLToPath(new URL('../results/', import.meta.url));

/**
 * A full garbage collection, so heap figures compare live memory rather than GC timing. `pnpm
 * bench` runs plain `node`, so expose `gc` at runtime instead of requiring `--expose-gc`.
 */
function gcFunction(): () => void {
  setFlagsFromString('--expose-gc');
  const gc: unknown = runInNewContext('gc');
  return isThunk(gc) ? gc : () => undefined;
}

function isThunk(value: unknown): value is () => void {
  return typeof value === 'function';
}
const collect = gcFunction();

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      quick: { type: 'boolean', default: false },
      only: { type: 'string' },
      'skip-postgres': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const only = values.only?.split(',').map((name) => name.trim());
  const unknown = only?.filter((name) => !suites.some((s) => s.name === name)) ?? [];
  if (unknown.length > 0) throw new Error(`unknown suite "${unknown.join(', ')}"\n${USAGE}`);
  const selected = only ? suites.filter((s) => only.includes(s.name)) : suites;
  const quick = values.quick;
  const cpuList = cpus();
  const report: RunReport = {
    timestamp: new Date().toISOString(),
    mode: quick ? 'quick' : 'full',
    environment: {
      node: process.version,
      natsServer: natsServerVersion(),
      platform: `${platform()} ${process.arch}`,
      cpus: cpuList.length,
      cpuModel: cpuList[0]?.model.trim() ?? 'unknown',
    },
    suites: [],
  };

  await using nats = await startNatsServer();
  let figures: Figure[] = [];
  let checks: Check[] = [];
  const ctx: SuiteContext = {
    natsUrl: nats.url,
    quick,
    skipPostgres: values['skip-postgres'],
    log: (message) => console.error(`  ${message}`),
    gc: collect,
    check: (ok, message) => {
      checks.push({ ok, message });
      if (!ok) console.error(`  INVARIANT BROKEN: ${message}`);
    },
    figure: (metric, value, unit, target) =>
      figures.push({ metric, value, unit, ...(target ? { target } : {}) }),
  };
  for (const suite of selected) {
    console.error(`${suite.name}: ${suite.description}`);
    figures = [];
    checks = [];
    collect();
    const before = memorySample();
    const started = performance.now();
    const results = await suite.run(ctx);
    const durationMs = performance.now() - started;
    collect();
    const after = memorySample();
    const entry: SuiteReport = {
      name: suite.name,
      description: suite.description,
      durationMs,
      memory: { before, after, delta: memoryDelta(before, after) },
      results,
      figures,
      checks,
    };
    report.suites.push(entry);
  }
  console.log(markdown(report));
  const written = await writeReport(
    RESULTS_DIR,
    report,
    values.quick ? 'quick' : values.only ? 'partial' : 'latest',
  );
  console.error(`\nwrote ${written.join(', ')}`);
  const broken = report.suites.flatMap((s) => s.checks.filter((c) => !c.ok));
  if (broken.length > 0) {
    // Only a broken invariant fails the run, never a timing.
    console.error(`${broken.length} invariant(s) broken`);
    process.exitCode = 1;
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
