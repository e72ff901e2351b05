export { startNatsServer, findNatsServer, natsServerVersion, freePort } from './nats-server.js';
export type { NatsServer, NatsServerOptions } from './nats-server.js';
export { startNatsCluster } from './nats-cluster.js';
export type { NatsCluster, NatsClusterOptions, ClusterNode } from './nats-cluster.js';
export { startFakeOpenAI } from './fake-openai.js';
export type {
  FakeOpenAI,
  FakeOpenAIOptions,
  FakeReply,
  FakeCompletion,
  FakeFault,
  FakeToolCall,
  RecordedRequest,
} from './fake-openai.js';
export { startSwarm } from './swarm.js';
export type { ServiceSpec, Swarm, SwarmOptions } from './swarm.js';
export { aborted, deferred } from './async.js';
