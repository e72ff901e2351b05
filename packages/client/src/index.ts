export { connect } from './client.js';
export type { ClientOptions, StartOptions, RunHandle, ReinsClient } from './client.js';
