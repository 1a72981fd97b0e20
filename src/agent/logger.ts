/**
 * pino JSON lines on stdout: `"level":"info"` as a word and an ISO time, so
 * `grep` and `journalctl` read them without a decoder. Anything named like a
 * credential is censored as a second line of defence; the first is that the
 * token is never handed to the logger at all.
 */
import pino, { type DestinationStream, type Logger } from 'pino';
import { PROGRAM, VERSION } from './config.js';

export type { Logger };

export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      name: PROGRAM,
      level,
      base: { pid: process.pid, version: VERSION },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: {
        paths: ['token', '*.token', 'authorization', '*.authorization', 'headers.authorization', '*.headers.authorization', 'proxy', '*.proxy'],
        censor: '[redacted]',
      },
    },
    destination ?? pino.destination({ fd: 1, sync: true }),
  );
}
