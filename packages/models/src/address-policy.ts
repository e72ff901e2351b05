import { BlockList, isIP } from 'node:net';
import { ProtocolError } from '@reins/protocol';

/** Why an address is not public; `null` when it is an ordinary public unicast address. */
export type AddressRange =
  | 'unspecified'
  | 'loopback'
  | 'private'
  | 'shared (CGNAT)'
  | 'link-local'
  | 'multicast'
  | 'reserved';

type Family = 'ipv4' | 'ipv6';
type Subnet = readonly [address: string, prefix: number, family: Family];

// Order matters: the first range that matches names the refusal. IPv4 rules also match the
// IPv4-mapped IPv6 forms (`::ffff:127.0.0.1`), which `BlockList` compares as IPv4.
const RANGES: readonly (readonly [AddressRange, readonly Subnet[]])[] = [
  [
    'unspecified',
    [
      ['0.0.0.0', 8, 'ipv4'],
      ['::', 128, 'ipv6'],
    ],
  ],
  [
    'loopback',
    [
      ['127.0.0.0', 8, 'ipv4'],
      ['::1', 128, 'ipv6'],
    ],
  ],
  [
    'private',
    [
      ['10.0.0.0', 8, 'ipv4'],
      ['172.16.0.0', 12, 'ipv4'],
      ['192.168.0.0', 16, 'ipv4'],
      ['fc00::', 7, 'ipv6'],
    ],
  ],
  ['shared (CGNAT)', [['100.64.0.0', 10, 'ipv4']]],
  [
    'link-local',
    [
      ['169.254.0.0', 16, 'ipv4'],
      ['fe80::', 10, 'ipv6'],
    ],
  ],
  [
    'multicast',
    [
      ['224.0.0.0', 4, 'ipv4'],
      ['ff00::', 8, 'ipv6'],
    ],
  ],
  [
    'reserved',
    [
      ['192.0.0.0', 24, 'ipv4'], // IETF protocol assignments
      ['192.0.2.0', 24, 'ipv4'], // documentation
      ['192.88.99.0', 24, 'ipv4'], // 6to4 relay anycast
      ['198.18.0.0', 15, 'ipv4'], // benchmarking
      ['198.51.100.0', 24, 'ipv4'], // documentation
      ['203.0.113.0', 24, 'ipv4'], // documentation
      ['240.0.0.0', 4, 'ipv4'], // reserved, and 255.255.255.255
      ['64:ff9b::', 96, 'ipv6'], // NAT64: reaches an IPv4 address through a gateway
      ['64:ff9b:1::', 48, 'ipv6'], // local NAT64
      ['100::', 64, 'ipv6'], // discard
      ['2001::', 23, 'ipv6'], // IETF protocol assignments (Teredo…)
      ['2001:db8::', 32, 'ipv6'], // documentation
      ['2002::', 16, 'ipv6'], // 6to4: embeds an IPv4 address
      ['3fff::', 20, 'ipv6'], // documentation
      ['fec0::', 10, 'ipv6'], // site-local (deprecated)
    ],
  ],
];

function blockList(subnets: readonly Subnet[]): BlockList {
  const list = new BlockList();
  for (const [address, prefix, family] of subnets) list.addSubnet(address, prefix, family);
  return list;
}

const LISTS = RANGES.map(([range, subnets]) => [range, blockList(subnets)] as const);
// Outside 2000::/3 nothing is global unicast; IPv4-mapped forms are judged by the IPv4 rules.
const GLOBAL_UNICAST_V6 = blockList([['2000::', 3, 'ipv6']]);
const MAPPED_V4 = blockList([['::ffff:0:0', 96, 'ipv6']]);

function familyOf(address: string): Family | undefined {
  const v = isIP(address);
  return v === 4 ? 'ipv4' : v === 6 ? 'ipv6' : undefined;
}

/** The non-public range `address` (an IP literal) falls in, or `null` for a public address. */
export function addressRange(address: string): AddressRange | null {
  const family = familyOf(address);
  if (family === undefined) return 'reserved';
  for (const [range, list] of LISTS) if (list.check(address, family)) return range;
  if (family === 'ipv6' && !GLOBAL_UNICAST_V6.check(address, 'ipv6')) {
    // `BlockList` maps an IPv4 subnet onto `::ffff:a.b.c.d`; a mapped public IPv4 is public.
    return MAPPED_V4.check(address, 'ipv6') ? null : 'reserved';
  }
  return null;
}

/** Options of `createAddressPolicy`. */
export interface AddressPolicyOptions {
  /** Allow loopback, private (RFC 1918, fc00::/7) and CGNAT addresses. */
  allowPrivateNetworks?: boolean | undefined;
  /** IP addresses or CIDR blocks (`127.0.0.1`, `10.0.0.0/8`, `::1`) allowed whatever their range. */
  allowAddresses?: readonly string[] | undefined;
}

/** The verdict on one address: allowed, or refused with the range that refused it. */
export type AddressVerdict = { allowed: true } | { allowed: false; range: AddressRange };

const PRIVATE_NETWORKS: readonly AddressRange[] = ['loopback', 'private', 'shared (CGNAT)'];

/**
 * Decides which resolved addresses an outbound connection may use: public unicast addresses
 * always; non-public ones only when `allowAddresses` lists them, or (loopback, private and
 * CGNAT only) with `allowPrivateNetworks`. Link-local (cloud metadata at 169.254.169.254),
 * multicast, unspecified and reserved addresses need an explicit `allowAddresses` entry.
 * Throws `ProtocolError` on an `allowAddresses` entry that is not an IP or CIDR.
 */
export function createAddressPolicy(
  options: AddressPolicyOptions = {},
): (address: string) => AddressVerdict {
  const allowed = new BlockList();
  for (const raw of options.allowAddresses ?? []) {
    const entry = raw.trim().replace(/^\[|\]$/g, '');
    const [address = '', prefixText, extra] = entry.split('/');
    const family = familyOf(address);
    const max = family === 'ipv4' ? 32 : 128;
    const prefix = prefixText === undefined ? max : Number(prefixText);
    if (
      family === undefined ||
      extra !== undefined ||
      (prefixText !== undefined && !/^\d{1,3}$/.test(prefixText)) ||
      prefix > max
    ) {
      throw new ProtocolError(
        `allowAddresses entry ${JSON.stringify(raw.slice(0, 100))} is not an IP address or CIDR block`,
      );
    }
    allowed.addSubnet(address, prefix, family);
  }
  const allowPrivate = options.allowPrivateNetworks === true;
  return (address) => {
    const family = familyOf(address);
    const range = addressRange(address);
    if (range === null) return { allowed: true };
    if (family !== undefined && allowed.check(address, family)) return { allowed: true };
    if (allowPrivate && PRIVATE_NETWORKS.includes(range)) return { allowed: true };
    return { allowed: false, range };
  };
}
