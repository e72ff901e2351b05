import { createGrantSigner } from '@reins/protocol';
import type { CommonOptions } from '../connection.js';
import { ExitCode } from '../errors.js';
import { createStyle, printJson, println } from '../output.js';

/**
 * `reins keygen`: prints a new supervisor signing seed (keep it secret) and its public key
 * (give it to executors as REINS_TRUSTED_ISSUERS). JSON: `{ seed, publicKey }`.
 */
export function keygenCommand(options: CommonOptions): ExitCode {
  const { seed, signer } = createGrantSigner();
  if (options.json) {
    printJson({ seed, publicKey: signer.publicKey });
    return ExitCode.ok;
  }
  const s = createStyle();
  println(`${s.bold('seed')}        ${seed}`);
  println(`${s.bold('public key')}  ${signer.publicKey}`);
  println(
    s.dim(
      'store the seed with chmod 600 and set REINS_SUPERVISOR_SEED_FILE=<path> for supervisors;',
    ),
  );
  println(s.dim('give executors REINS_TRUSTED_ISSUERS=<public key>'));
  return ExitCode.ok;
}
