#!/usr/bin/env node
// watch-events: follows a Connecting event stream the way a dashboard does,
// over NATS websocket (ws://, as a browser would) or plain NATS (nats://), and
// prints each event as one line of JSON:
//   {"seq": 12, "subject": "connecting.scheduling.booking.confirmed",
//    "type": "connecting.events.v1.BookingChanged", "id": "<ce-id>",
//    "resource": "<ce-subject: the booking's id>", "time": "<ce-time>",
//    "data": {…the event, proto3 JSON…}}
//
// It reads with an ordered consumer: nothing is left on the server, it needs
// no write access to the stream, and after a reconnect the library resumes
// after the last event seen. The same two packages (@nats-io/nats-core and
// @nats-io/jetstream) run in a browser; this file is the example to start a
// dashboard from. Keep a copy of an event only if its `id` is new to you and
// its resource's `etag` is greater than the one you hold (README, Events).
//
// Usage:
//   node tools/watch-events/watch-events.js [--server ws://127.0.0.1:14223]
//     [--stream SCHEDULING] [--subject 'connecting.scheduling.booking.>']
//     [--from all|new|<ISO 8601 time>|<N>m|<N>h] [--count N] [--idle SECONDS]
// --from: where to start (default all: the stream's first event kept);
// --count: exit 0 after N events; --idle: exit 0 once no event came for that
// long (both for scripts; without them it follows until interrupted).
// Exit status 1 on a bad argument or when the stream cannot be read.
'use strict';

if (typeof globalThis.WebSocket === 'undefined') {
  // Node before 22 has no built-in WebSocket (Node 20: --experimental-websocket).
  globalThis.WebSocket = require('ws').WebSocket;
}
const { wsconnect } = require('@nats-io/nats-core');
const { connect } = require('@nats-io/transport-node');
const { jetstream, DeliverPolicy } = require('@nats-io/jetstream');

function usage(message) {
  process.stderr.write(`watch-events: ${message}\n` +
    'usage: watch-events.js [--server URL] [--stream NAME] [--subject FILTER] ' +
    '[--from all|new|TIME|Nm|Nh] [--count N] [--idle SECONDS]\n');
  process.exit(1);
}

function parseArgs(argv) {
  const opts = { server: 'ws://127.0.0.1:14223', stream: 'SCHEDULING', subject: '', from: 'all',
    count: 0, idle: 0 };
  for (let i = 0; i < argv.length; i++) {
    const name = argv[i].replace(/^--/, '');
    if (!(name in opts) || argv[i] === name) usage(`unknown argument ${argv[i]}`);
    if (i + 1 >= argv.length) usage(`${argv[i]} needs a value`);
    opts[name] = argv[++i];
  }
  for (const k of ['count', 'idle']) {
    const n = Number(opts[k]);
    if (!Number.isInteger(n) || n < 0) usage(`--${k}: a whole number of at least 0, not ${opts[k]}`);
    opts[k] = n;
  }
  return opts;
}

// The ordered consumer's starting point for --from.
function startAt(from) {
  if (from === 'all') return { deliver_policy: DeliverPolicy.All };
  if (from === 'new') return { deliver_policy: DeliverPolicy.New };
  let at;
  const ago = /^(\d+)([mh])$/.exec(from);
  if (ago) {
    at = new Date(Date.now() - Number(ago[1]) * (ago[2] === 'm' ? 60e3 : 3600e3));
  } else {
    at = new Date(from);
    if (Number.isNaN(at.getTime())) usage(`--from: all, new, an ISO 8601 time or Nm/Nh, not ${from}`);
  }
  return { deliver_policy: DeliverPolicy.StartTime, opt_start_time: at.toISOString() };
}

function line(m) {
  const h = (k) => (m.headers && m.headers.get(k)) || '';
  let data;
  try {
    data = m.json();
  } catch {
    data = m.string();  // not JSON: passed on as it came
  }
  return JSON.stringify({ seq: m.seq, subject: m.subject, type: h('ce-type'), id: h('ce-id'),
    resource: h('ce-subject'), time: h('ce-time'), data });
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const start = startAt(opts.from);
  const nc = opts.server.startsWith('ws')
    ? await wsconnect({ servers: opts.server, name: 'watch-events' })
    : await connect({ servers: opts.server, name: 'watch-events' });
  const js = jetstream(nc);
  const consumer = await js.consumers.get(opts.stream,
    { ...start, ...(opts.subject ? { filter_subjects: opts.subject } : {}) });
  const messages = await consumer.consume();
  let seen = 0;
  let timer = null;
  const idle = () => {
    if (!opts.idle) return;
    clearTimeout(timer);
    timer = setTimeout(() => messages.stop(), opts.idle * 1000);
  };
  idle();
  for await (const m of messages) {
    process.stdout.write(line(m) + '\n');
    idle();
    if (opts.count && ++seen >= opts.count) break;
  }
  clearTimeout(timer);
  await nc.close();
}

main().catch((e) => {
  process.stderr.write(`watch-events: ${e.message || e}\n`);
  process.exit(1);
});
