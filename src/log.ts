// JSON-lines logger. One line per event so operators can pipe into jq or a log shipper.
export type Level = 'debug' | 'info' | 'warn' | 'error';
const order: Record<Level, number> = { debug: 10, info: 20, warn: 30, error: 40 };

let threshold: number = order.info;
let sink: (line: string) => void = (line) => process.stderr.write(line + '\n');

export function setLogLevel(level: Level): void {
  threshold = order[level];
}

export function setLogSink(write: (line: string) => void): void {
  sink = write;
}

export function isLevel(value: string): value is Level {
  return value in order;
}

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
  child(fields: Record<string, unknown>): Logger;
}

function emit(level: Level, base: Record<string, unknown>, msg: string, fields?: Record<string, unknown>): void {
  if (order[level] < threshold) return;
  const entry: Record<string, unknown> = { time: new Date().toISOString(), level, msg, ...base, ...fields };
  for (const [k, v] of Object.entries(entry)) {
    if (v instanceof Error) entry[k] = v.message;
  }
  sink(JSON.stringify(entry));
}

export function logger(base: Record<string, unknown> = {}): Logger {
  return {
    debug: (m, f) => emit('debug', base, m, f),
    info: (m, f) => emit('info', base, m, f),
    warn: (m, f) => emit('warn', base, m, f),
    error: (m, f) => emit('error', base, m, f),
    child: (f) => logger({ ...base, ...f }),
  };
}

export const log = logger();
