import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { z } from 'zod';
import { chartSvg, type ChartReport } from './chart.js';

const USAGE = `usage: node bench/dist/render-chart.js [<report.json> [<chart.svg>]]
Re-draws the chart of a saved run without running the benchmarks
(default: bench/results/latest.json → bench/results/latest.svg).`;

const RESULTS_DIR = new URL('../results/', import.meta.url);

/** The part of a saved `RunReport` the chart reads; a file that does not match is refused. */
const SavedReport = z.object({
  timestamp: z.string(),
  mode: z.enum(['quick', 'full']),
  environment: z.object({
    node: z.string(),
    natsServer: z.string(),
    platform: z.string(),
    cpus: z.number(),
    cpuModel: z.string(),
  }),
  suites: z.array(
    z.object({
      name: z.string(),
      results: z.array(
        z.object({
          metric: z.string(),
          better: z.enum(['lower', 'higher']),
          // JSON has no NaN or Infinity: JSON.stringify wrote them as null.
          ratio: z
            .number()
            .nullable()
            .transform((v) => v ?? Number.NaN),
          target: z.number().optional(),
        }),
      ),
    }),
  ),
}) satisfies z.ZodType<ChartReport, unknown>;

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: { help: { type: 'boolean', short: 'h', default: false } },
  });
  if (values.help || positionals.length > 2) {
    console.log(USAGE);
    return;
  }
  const input = positionals[0] ?? fileURLToPath(new URL('latest.json', RESULTS_DIR));
  const output = positionals[1] ?? fileURLToPath(new URL('latest.svg', RESULTS_DIR));
  const report = SavedReport.parse(JSON.parse(await readFile(input, 'utf8')));
  await writeFile(output, await chartSvg(report));
  console.error(`wrote ${output} from ${input}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
