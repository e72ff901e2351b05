import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chartSvg } from './chart.js';
import { meetsTarget } from './compare.js';
import type { Figure, MemorySample, Result, RunReport } from './types.js';

function formatValue(value: number, unit: string): string {
  if (!Number.isFinite(value)) return 'n/a';
  if (unit === 'ops/s' || unit === 'steps/s')
    return `${Math.round(value).toLocaleString('en-US')} ${unit}`;
  if (unit === '×') return `${value.toFixed(3)}×`;
  if (unit === 'conflicts') return `${value.toFixed(3)} ${unit}`;
  if (unit === 'µs' && value >= 10_000) return `${(value / 1000).toFixed(1)} ms`;
  return `${value.toFixed(1)} ${unit}`;
}

function formatBytes(bytes: number): string {
  const mib = bytes / (1024 * 1024);
  return `${mib >= 0 ? '+' : ''}${mib.toFixed(1)} MiB`;
}

function verdict(r: Result): string {
  const ok = meetsTarget(r);
  if (ok === undefined) return '';
  return `${r.better === 'lower' ? '≤' : '≥'} ${r.target?.toFixed(2) ?? ''}× ${ok ? 'ok' : 'MISSED'}`;
}

function figureVerdict(f: Figure): string {
  if (!f.target) return '';
  const ok = f.target.better === 'lower' ? f.value <= f.target.value : f.value >= f.target.value;
  return `${f.target.better === 'lower' ? '≤' : '≥'} ${formatValue(f.target.value, f.unit)} ${ok ? 'ok' : 'MISSED'}`;
}

/** The run as a markdown table, one row per figure, then memory per suite. */
export function markdown(report: RunReport): string {
  const lines = [
    `Reins benchmarks (${report.mode}), node ${report.environment.node}, nats-server ` +
      `${report.environment.natsServer}, ${report.environment.cpus} × ${report.environment.cpuModel}`,
    '',
    '| suite | metric | baseline (raw NATS unless named) | Reins | reins / baseline (median of rounds) | target |',
    '| --- | --- | ---: | ---: | ---: | --- |',
  ];
  for (const s of report.suites) {
    for (const r of s.results) {
      lines.push(
        `| ${s.name} | ${r.metric} | ${formatValue(r.raw, r.unit)} | ${formatValue(r.reins, r.unit)} ` +
          `| ${r.ratio.toFixed(2)}× | ${verdict(r)} |`,
      );
    }
  }
  const figures = report.suites.flatMap((s) => s.figures.map((f) => ({ suite: s.name, f })));
  if (figures.length > 0) {
    lines.push(
      '',
      '| suite | figure (no raw baseline) | value | target |',
      '| --- | --- | ---: | --- |',
    );
    for (const { suite, f } of figures)
      lines.push(
        `| ${suite} | ${f.metric} | ${formatValue(f.value, f.unit)} | ${figureVerdict(f)} |`,
      );
  }
  const checks = report.suites.flatMap((s) => s.checks.map((c) => ({ suite: s.name, c })));
  if (checks.length > 0) {
    lines.push('', '| suite | invariant | holds |', '| --- | --- | --- |');
    for (const { suite, c } of checks)
      lines.push(`| ${suite} | ${c.message} | ${c.ok ? 'yes' : '**NO**'} |`);
  }
  lines.push('', '| suite | duration | RSS Δ | heap used Δ | RSS after | heap used after |');
  lines.push('| --- | ---: | ---: | ---: | ---: | ---: |');
  for (const s of report.suites) {
    const m = s.memory;
    lines.push(
      `| ${s.name} | ${(s.durationMs / 1000).toFixed(1)} s | ${formatBytes(m.delta.rss)} ` +
        `| ${formatBytes(m.delta.heapUsed)} | ${mib(m.after.rss)} | ${mib(m.after.heapUsed)} |`,
    );
  }
  return lines.join('\n');
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

/**
 * The chart of every reins / raw ratio (log scale, grouped by suite, targets marked), as SVG,
 * drawn with Vega-Lite and rendered headlessly by Vega; see `chartSpec` for what it shows.
 */
export function svg(report: RunReport): Promise<string> {
  return chartSvg(report);
}

/** Process memory now (bytes). */
export function memorySample(): MemorySample {
  const m = process.memoryUsage();
  return { rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external };
}

/** after − before, field by field. */
export function memoryDelta(before: MemorySample, after: MemorySample): MemorySample {
  return {
    rss: after.rss - before.rss,
    heapUsed: after.heapUsed - before.heapUsed,
    heapTotal: after.heapTotal - before.heapTotal,
    external: after.external - before.external,
  };
}

/**
 * Writes `<timestamp>.json`, `<name>.json`, `<name>.svg` and `<name>.md` (the table) into `dir`
 * (created when missing). `name` is `latest` for a full run (the one committed for the README),
 * `quick` or `partial` otherwise, so a smoke run does not replace the full results.
 * Returns the paths written.
 */
export async function writeReport(
  dir: string,
  report: RunReport,
  name: 'latest' | 'quick' | 'partial' = 'latest',
): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const json = JSON.stringify(report, null, 2) + '\n';
  const stamped = join(dir, `${report.timestamp.replace(/[:.]/g, '-')}.json`);
  const latest = join(dir, `${name}.json`);
  const chart = join(dir, `${name}.svg`);
  await writeFile(stamped, json);
  await writeFile(latest, json);
  await writeFile(chart, await svg(report));
  const table = join(dir, `${name}.md`);
  await writeFile(table, `${markdown(report)}\n`);
  return [stamped, latest, chart, table];
}
