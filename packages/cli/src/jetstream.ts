import type { ReinsClient } from '@reins/client';

/**
 * Why JetStream cannot be used on this connection, or `undefined` when it answers: one
 * `$JS.API.INFO` request (2 s), so a server started without `-js` is named at once instead of
 * after the retries of a stream or consumer call.
 */
export async function jetStreamProblem(client: ReinsClient): Promise<string | undefined> {
  try {
    const m = await client.runtime.nc.request('$JS.API.INFO', undefined, { timeout: 2000 });
    const info: unknown = m.json();
    const err =
      typeof info === 'object' && info !== null && 'error' in info
        ? (info as { error: { description?: string } }).error
        : undefined;
    return err ? (err.description ?? 'JetStream error') : undefined;
  } catch (err) {
    return (err as Error).message;
  }
}
