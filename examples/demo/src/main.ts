// Reins demo (foundation stage): a protocol round trip through a real nats-server.
// It becomes the full governed swarm when the planner/executor/supervisor land; the command stays `./dev demo`.
import { connect, headers } from '@nats-io/transport-node';
import {
  CONTENT_TYPE,
  Headers,
  ErrorReply,
  RunRecord,
  RunStartRequest,
  createSubjects,
  decode,
  encode,
  fromWireError,
  newId,
  toWireError,
} from '@reins/protocol';
import { startNatsServer } from '@reins/testing';

const subjects = createSubjects();
const external = process.env['NATS_URL'];
const server = external ? undefined : await startNatsServer();
const url = external ?? server?.url ?? '';
console.log(`nats-server: ${url}${server ? ' (embedded, JetStream on)' : ''}`);

const nc = await connect({ servers: url });
// A stand-in admission handler: validates every request and answers with a run record or a coded error.
nc.subscribe(subjects.runsStart, {
  callback: (_err, msg) => {
    const h = headers();
    h.set(Headers.contentType, CONTENT_TYPE);
    try {
      const req = decode(RunStartRequest, msg.data, { name: 'RunStartRequest' });
      const now = Date.now();
      h.set(Headers.schema, 'reins.RunRecord');
      msg.respond(
        encode(RunRecord, {
          runId: newId('run'),
          goal: req.goal,
          role: req.role,
          roles: req.roles ?? [req.role, 'executor'],
          status: 'queued',
          budget: req.budget,
          createdAt: now,
          updatedAt: now,
        }),
        { headers: h },
      );
    } catch (err) {
      h.set(Headers.error, '1');
      msg.respond(encode(ErrorReply, { error: toWireError(err) }), { headers: h });
    }
  },
});

async function ask(payload: Uint8Array): Promise<void> {
  const reply = await nc.request(subjects.runsStart, payload, { timeout: 2000 });
  if (reply.headers?.get(Headers.error)) {
    const err = fromWireError(decode(ErrorReply, reply.data).error);
    console.log(`  refused: ${err.name} [${err.code}] ${err.message}`);
  } else {
    const run = decode(RunRecord, reply.data);
    console.log(
      `  admitted: ${run.runId} status=${run.status} budget=${JSON.stringify(run.budget)}`,
    );
  }
}

console.log(`request on ${subjects.runsStart}: a valid run`);
await ask(encode(RunStartRequest, { goal: 'summarise the docs', budget: { usd: 0.5, steps: 20 } }));
console.log('request with a JSON payload where msgpack is expected');
await ask(new TextEncoder().encode(JSON.stringify({ goal: 'x', budget: { usd: 'lots' } })));
await nc.close();
await server?.stop();
console.log('done');
