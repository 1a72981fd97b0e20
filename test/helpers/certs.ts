/**
 * A throwaway CA and a server certificate for 127.0.0.1 / localhost, made
 * with the openssl command line, for wss tests.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestCerts {
  caCert: Buffer;
  caFile: string;
  key: Buffer;
  cert: Buffer;
  cleanup: () => void;
}

export interface CertOptions {
  /** Validity of the server certificate in days; negative makes one that has already expired. Default 2. */
  days?: number;
  /** Its subjectAltName. Default `IP:127.0.0.1,DNS:localhost`. */
  san?: string;
}

export function makeCerts(options: CertOptions = {}): TestCerts {
  const dir = mkdtempSync(join(tmpdir(), 'revdial-certs-'));
  const at = (f: string): string => join(dir, f);
  const ssl = (...args: string[]): void => {
    execFileSync('openssl', args, { stdio: 'pipe' });
  };
  ssl(
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=revdial test CA',
    '-keyout',
    at('ca.key'),
    '-out',
    at('ca.pem'),
  );
  ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', '/CN=localhost', '-keyout', at('server.key'), '-out', at('server.csr'));
  writeFileSync(at('ext.cnf'), `subjectAltName=${options.san ?? 'IP:127.0.0.1,DNS:localhost'}\nextendedKeyUsage=serverAuth\n`);
  ssl(
    'x509',
    '-req',
    '-in',
    at('server.csr'),
    '-CA',
    at('ca.pem'),
    '-CAkey',
    at('ca.key'),
    '-CAcreateserial',
    '-days',
    String(options.days ?? 2),
    '-extfile',
    at('ext.cnf'),
    '-out',
    at('server.pem'),
  );
  return {
    caCert: readFileSync(at('ca.pem')),
    caFile: at('ca.pem'),
    key: readFileSync(at('server.key')),
    cert: readFileSync(at('server.pem')),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}
