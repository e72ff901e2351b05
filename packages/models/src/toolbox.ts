import { ProtocolError } from '@reins/protocol';
import { calculator } from './calculator.js';
import { createFileTools } from './file-tools.js';
import { createHttpFetchTool } from './http-fetch-tool.js';
import { createScratchpad } from './scratchpad.js';
import type { AnyTool } from './tool.js';

/** Names of the standard tool groups. */
export const TOOL_GROUPS = ['files', 'calculator', 'scratchpad', 'http'] as const;
export type ToolGroup = (typeof TOOL_GROUPS)[number];

/** Options of `createToolbox`. */
export interface ToolboxOptions {
  /** Groups to include (default: files, calculator, scratchpad). */
  groups?: readonly string[];
  /** Sandbox directory of the file tools (required with `files`). */
  root?: string;
  /** Hosts `http_fetch` may reach (required with `http`). */
  allowHosts?: readonly string[];
  /** IPs or CIDR blocks `http_fetch` may reach although not public (see `HttpFetchToolOptions`). */
  allowAddresses?: readonly string[];
  /** Let `http_fetch` reach loopback, private and CGNAT addresses (see `HttpFetchToolOptions`). */
  allowPrivateNetworks?: boolean;
}

/**
 * The standard toolbox by group name, for services configured from the environment: executors
 * run these tools and planners offer their specs to the model. Unknown group names, and groups
 * missing their required option, throw a `ProtocolError` that names the problem.
 */
export function createToolbox(options: ToolboxOptions = {}): AnyTool[] {
  const groups = options.groups ?? ['files', 'calculator', 'scratchpad'];
  const tools: AnyTool[] = [];
  for (const g of groups) {
    switch (g) {
      case 'files':
        if (!options.root)
          throw new ProtocolError('the files tools need a sandbox directory (root)');
        tools.push(...createFileTools({ root: options.root }).tools);
        break;
      case 'calculator':
        tools.push(calculator);
        break;
      case 'scratchpad':
        tools.push(...createScratchpad().tools);
        break;
      case 'http':
        if (!options.allowHosts?.length)
          throw new ProtocolError('http_fetch needs a list of allowed hosts');
        tools.push(
          createHttpFetchTool({
            allowHosts: options.allowHosts,
            ...(options.allowAddresses ? { allowAddresses: options.allowAddresses } : {}),
            ...(options.allowPrivateNetworks ? { allowPrivateNetworks: true } : {}),
          }),
        );
        break;
      default:
        throw new ProtocolError(
          `unknown tool group ${JSON.stringify(g)}; known: ${TOOL_GROUPS.join(', ')}`,
        );
    }
  }
  return tools;
}
