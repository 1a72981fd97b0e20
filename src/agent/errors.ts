/**
 * Every failure the agent reports carries a stable `code`. Tests and operators
 * match on the code; the message says what happened and what to check.
 *
 * All codes live in this one table (as Fastify keeps its errors) so that a
 * new failure is added in one place and `grep REVDIAL_` finds them all.
 */
export const ErrorCodes = {
  CONFIG_INVALID: 'REVDIAL_CONFIG_INVALID',
  AUTH_REJECTED: 'REVDIAL_AUTH_REJECTED',
  HANDSHAKE_REJECTED: 'REVDIAL_HANDSHAKE_REJECTED',
  HANDSHAKE_TIMEOUT: 'REVDIAL_HANDSHAKE_TIMEOUT',
  CONNECT_FAILED: 'REVDIAL_CONNECT_FAILED',
  TLS_UNTRUSTED: 'REVDIAL_TLS_UNTRUSTED',
  CONTROL_CLOSED: 'REVDIAL_CONTROL_CLOSED',
  CONTROL_UNSTABLE: 'REVDIAL_CONTROL_UNSTABLE',
  CONTROL_SEND_STALLED: 'REVDIAL_CONTROL_SEND_STALLED',
  PING_TIMEOUT: 'REVDIAL_PING_TIMEOUT',
  PROTOCOL_TEXT_FRAME: 'REVDIAL_PROTOCOL_TEXT_FRAME',
  PROTOCOL_LINE_TOO_LONG: 'REVDIAL_PROTOCOL_LINE_TOO_LONG',
  PROTOCOL_INVALID_JSON: 'REVDIAL_PROTOCOL_INVALID_JSON',
  CONN_PATH_INVALID: 'REVDIAL_CONN_PATH_INVALID',
  TUNNEL_LIMIT: 'REVDIAL_TUNNEL_LIMIT',
  PICKUP_BACKLOG_FULL: 'REVDIAL_PICKUP_BACKLOG_FULL',
  SHUTTING_DOWN: 'REVDIAL_SHUTTING_DOWN',
  PICKUP_TIMEOUT: 'REVDIAL_PICKUP_TIMEOUT',
  DATA_DIAL_FAILED: 'REVDIAL_DATA_DIAL_FAILED',
  /** A data connection's socket was dead before any answer (a warm one the peer dropped): retried once. */
  DATA_SOCKET_STALE: 'REVDIAL_DATA_SOCKET_STALE',
  LOCAL_DIAL_FAILED: 'REVDIAL_LOCAL_DIAL_FAILED',
  LOCAL_DIAL_TIMEOUT: 'REVDIAL_LOCAL_DIAL_TIMEOUT',
  TUNNEL_ABORTED: 'REVDIAL_TUNNEL_ABORTED',
  // Data connections (tunnel/data-connection.ts).
  HANDSHAKE_INVALID: 'REVDIAL_HANDSHAKE_INVALID',
  PROTOCOL_FRAME_INVALID: 'REVDIAL_PROTOCOL_FRAME_INVALID',
  FRAME_TOO_LARGE: 'REVDIAL_FRAME_TOO_LARGE',
  DATA_PING_TIMEOUT: 'REVDIAL_DATA_PING_TIMEOUT',
  // Operations surface: egress proxy, ops server, registry client.
  PROXY_FAILED: 'REVDIAL_PROXY_FAILED',
  PROXY_REJECTED: 'REVDIAL_PROXY_REJECTED',
  OPS_LISTEN_FAILED: 'REVDIAL_OPS_LISTEN_FAILED',
  REGISTRY_FAILED: 'REVDIAL_REGISTRY_FAILED',
  REGISTRY_TIMEOUT: 'REVDIAL_REGISTRY_TIMEOUT',
  HEARTBEAT_EXTRA_INVALID: 'REVDIAL_HEARTBEAT_EXTRA_INVALID',
  DISK_USAGE_FAILED: 'REVDIAL_DISK_USAGE_FAILED',
  // `doctor`: failures only its checks tell apart.
  DNS_FAILED: 'REVDIAL_DNS_FAILED',
  TLS_CERT_EXPIRED: 'REVDIAL_TLS_CERT_EXPIRED',
  TLS_CERT_NOT_YET_VALID: 'REVDIAL_TLS_CERT_NOT_YET_VALID',
  TLS_HOSTNAME_MISMATCH: 'REVDIAL_TLS_HOSTNAME_MISMATCH',
  TLS_HANDSHAKE_FAILED: 'REVDIAL_TLS_HANDSHAKE_FAILED',
  WOLF_API_FAILED: 'REVDIAL_WOLF_API_FAILED',
  DOCTOR_TIMEOUT: 'REVDIAL_DOCTOR_TIMEOUT',
  // Control-plane side (registry, scheduler, sandbox routing).
  REGISTRY_REQUEST_INVALID: 'REVDIAL_REGISTRY_REQUEST_INVALID',
  INSTANCE_NOT_FOUND: 'REVDIAL_INSTANCE_NOT_FOUND',
  NO_INSTANCE_AVAILABLE: 'REVDIAL_NO_INSTANCE_AVAILABLE',
  PLACEMENT_NOT_FOUND: 'REVDIAL_PLACEMENT_NOT_FOUND',
  PLACEMENT_UNREACHABLE: 'REVDIAL_PLACEMENT_UNREACHABLE',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export class RevdialError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'RevdialError';
    this.code = code;
  }
}

/** The handshake was answered with an HTTP status instead of 101. */
export class HandshakeRejectedError extends RevdialError {
  readonly status: number;
  readonly body: string;

  constructor(code: ErrorCode, message: string, status: number, body: string) {
    super(code, message);
    this.name = 'HandshakeRejectedError';
    this.status = status;
    this.body = body;
  }
}

export function isRevdialError(err: unknown): err is RevdialError {
  return err instanceof RevdialError;
}

/** A code for any thrown value: ours, Node's (`ECONNREFUSED`), or `UNKNOWN`. */
export function codeOf(err: unknown): string {
  if (err instanceof RevdialError) return err.code;
  if (err !== null && typeof err === 'object' && 'code' in err && typeof err.code === 'string') {
    return err.code;
  }
  return 'UNKNOWN';
}

/** A short, single-line description of any thrown value, for logs and `pickup-failed`. */
export function describe(err: unknown, max = 300): string {
  const text = err instanceof Error ? err.message : String(err);
  const oneLine = text.replace(/\s+/g, ' ').trim();
  return oneLine.length > max ? `${oneLine.slice(0, max - 1)}…` : oneLine;
}
