/**
 * A private CA and a server certificate for the WAN mode's control plane
 * (ECDSA P-256, as production planes commonly use), made with `openssl` into a
 * directory the benchmark owns. The agent is given the CA (`--ca-file`) and
 * verifies the plane's certificate, whose subjectAltName is the plane's address.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface BenchPki {
  caFile: string;
  keyFile: string;
  certFile: string;
}

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

export function makePki(dir: string, ipAddress: string): BenchPki {
  const caKey = join(dir, 'ca.key');
  const caFile = join(dir, 'ca.pem');
  const keyFile = join(dir, 'server.key');
  const csr = join(dir, 'server.csr');
  const certFile = join(dir, 'server.pem');
  const ext = join(dir, 'server.ext');
  const p256 = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl(['req', '-x509', ...p256, '-keyout', caKey, '-out', caFile, '-days', '2', '-subj', '/CN=revdial WAN bench CA']);
  openssl(['req', ...p256, '-keyout', keyFile, '-out', csr, '-subj', `/CN=${ipAddress}`]);
  writeFileSync(ext, `subjectAltName=IP:${ipAddress}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n`);
  openssl(['x509', '-req', '-in', csr, '-CA', caFile, '-CAkey', caKey, '-CAcreateserial', '-out', certFile, '-days', '2', '-extfile', ext]);
  return { caFile, keyFile, certFile };
}
