/** Entry point of the executable: see cli.ts for exit codes. */
import { main } from './cli.js';

main(process.argv.slice(2), process.env).then(
  (code) => {
    if (code !== undefined) process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`wolf-revdial-client: internal error: ${String(err)}\n`);
    process.exitCode = 1;
  },
);
