/**
 * TLS for every connection to the control plane, made cheap without verifying
 * less:
 *
 * - ONE secure context for the agent's life. Handing `ca` to `tls.connect`
 *   (what `ws` does) builds a new OpenSSL context, CA store included, for each
 *   connection: about a third of a handshake's CPU. The context is rebuilt only
 *   when the --ca-file changes on disk (checked with a `stat` at most once a
 *   second, at dial time: a rotated CA bundle, e.g. a re-mounted Secret, is
 *   picked up by the next connection).
 * - Session resumption: the last session (TLS 1.3 ticket or TLS 1.2 session)
 *   the control plane handed out is kept per origin and offered on the next
 *   connection, which then skips the certificate exchange and its checks (the
 *   server proved itself on the full handshake that made the session).
 *   Sessions are forgotten when the CA changes.
 * - The certificate and the host name are always verified, unless
 *   --insecure-skip-tls-verify. ALPN offers `http/1.1` only (WebSocket).
 */
import { readFileSync, statSync } from 'node:fs';
import { isIP } from 'node:net';
import { type ConnectionOptions, type SecureContext, type SecureVersion, createSecureContext } from 'node:tls';
import { type Clock, systemClock } from '../clock.js';

export interface TlsSettingsOptions {
  /** --ca-file: watched for changes. */
  caFile?: string | undefined;
  /** The CA bundle already read (at start), used until the file changes. */
  ca?: Buffer | undefined;
  rejectUnauthorized: boolean;
  /** --tls-max-version: `TLSv1.2` caps the handshake (cheaper resumption, see README). */
  maxVersion?: SecureVersion | undefined;
  clock?: Clock;
  /** Told when a changed --ca-file was loaded, or could not be (the old context stays). */
  onCaReload?: (event: { ok: boolean; caFile: string; error?: string }) => void;
}

/** How often, at most, the --ca-file is stat'ed. */
const CA_CHECK_INTERVAL_MS = 1000;
/** Origins with a stored session, at most (there is one control plane: this only bounds memory). */
const MAX_SESSION_ORIGINS = 16;

export class TlsSettings {
  readonly rejectUnauthorized: boolean;
  readonly maxVersion: SecureVersion | undefined;
  readonly #caFile: string | undefined;
  readonly #clock: Clock;
  readonly #onCaReload: TlsSettingsOptions['onCaReload'];
  #ca: Buffer | undefined;
  #context: SecureContext | undefined;
  #caStamp = '';
  #checkedAt = -Infinity;
  readonly #sessions = new Map<string, Buffer>();
  /** How many times the context was built (tests, metrics). */
  contextBuilds = 0;

  constructor(options: TlsSettingsOptions) {
    this.rejectUnauthorized = options.rejectUnauthorized;
    this.maxVersion = options.maxVersion;
    this.#caFile = options.caFile;
    this.#ca = options.ca;
    this.#clock = options.clock ?? systemClock;
    this.#onCaReload = options.onCaReload;
    if (this.#caFile !== undefined) {
      this.#caStamp = stampOf(this.#caFile);
      this.#checkedAt = this.#clock.now();
    }
  }

  /** The CA bundle in use (undefined: the system's roots). */
  get ca(): Buffer | undefined {
    return this.#ca;
  }

  /** The shared secure context, rebuilt first if the --ca-file changed. */
  context(): SecureContext {
    this.#checkCaFile();
    if (!this.#context) {
      this.#context = createSecureContext({
        ...(this.#ca ? { ca: this.#ca } : {}),
        ...(this.maxVersion ? { maxVersion: this.maxVersion } : {}),
      });
      this.contextBuilds++;
    }
    return this.#context;
  }

  /**
   * Options for `tls.connect` to `host:port` (the caller adds `socket` for a
   * proxy tunnel). The version cap lives in the context: `tls.connect` takes
   * no context options when handed one.
   */
  connectOptions(host: string, port: number): ConnectionOptions {
    const secureContext = this.context();
    const session = this.#sessions.get(originKey(host, port));
    return {
      host,
      port,
      // SNI carries host names only (RFC 6066); the certificate is still checked against `host`.
      ...(isIP(host) === 0 ? { servername: host } : {}),
      secureContext,
      rejectUnauthorized: this.rejectUnauthorized,
      ALPNProtocols: ['http/1.1'],
      ...(session ? { session } : {}),
    };
  }

  /** Keeps the latest session the server issued for `host:port` (the socket's 'session' event). */
  rememberSession(host: string, port: number, session: Buffer): void {
    const key = originKey(host, port);
    this.#sessions.delete(key);
    if (this.#sessions.size >= MAX_SESSION_ORIGINS) {
      const oldest = this.#sessions.keys().next().value;
      if (oldest !== undefined) this.#sessions.delete(oldest);
    }
    this.#sessions.set(key, session);
  }

  /** Forgets the session for `host:port` (e.g. the server refused to resume it and the handshake failed). */
  forgetSession(host: string, port: number): void {
    this.#sessions.delete(originKey(host, port));
  }

  hasSession(host: string, port: number): boolean {
    return this.#sessions.has(originKey(host, port));
  }

  #checkCaFile(): void {
    const file = this.#caFile;
    if (file === undefined) return;
    const now = this.#clock.now();
    if (now - this.#checkedAt < CA_CHECK_INTERVAL_MS) return;
    this.#checkedAt = now;
    const stamp = stampOf(file);
    if (stamp === this.#caStamp) return;
    this.#caStamp = stamp;
    let ca: Buffer;
    try {
      ca = readFileSync(file);
    } catch (err) {
      // Mid-rotation (a Secret's symlink swap) the file may be missing for a moment: keep the last good one.
      this.#onCaReload?.({ ok: false, caFile: file, error: (err as NodeJS.ErrnoException).code ?? String(err) });
      return;
    }
    if (!ca.includes('-----BEGIN CERTIFICATE-----')) {
      this.#onCaReload?.({ ok: false, caFile: file, error: 'no PEM certificate in the file' });
      return;
    }
    if (this.#ca && ca.equals(this.#ca)) return;
    this.#ca = ca;
    this.#context = undefined;
    // A session resumes a trust decision made under the old CA: start over.
    this.#sessions.clear();
    this.#onCaReload?.({ ok: true, caFile: file });
  }
}

function originKey(host: string, port: number): string {
  return `${host.toLowerCase()}:${port}`;
}

/** Size, mtime and inode: any rewrite or replacement of the file changes it. */
function stampOf(file: string): string {
  try {
    const s = statSync(file, { bigint: true });
    return `${s.ino}:${s.size}:${s.mtimeNs}:${s.ctimeNs}`;
  } catch (err) {
    return `missing:${(err as NodeJS.ErrnoException).code ?? ''}`;
  }
}
