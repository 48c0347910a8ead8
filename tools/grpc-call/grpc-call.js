#!/usr/bin/env node
// grpc-call: grpcurl's everyday commands, for machines without grpcurl (it is
// not packaged for Debian 12). Learns every type from the server's reflection
// service, so it needs no proto files, and reads and writes proto3 JSON.
//
//   grpc-call [-plaintext] [-H 'name: value']... [-d JSON|@|@file] [-max-time S] ADDR list [SERVICE]
//   grpc-call [-plaintext] ADDR describe SYMBOL
//   grpc-call [-plaintext] [-H ...] [-d ...] ADDR package.Service/Method
//
// Exit status: 0 on success, 2 on bad usage, 1 if the server cannot be
// reached or reflected, and 64 + the gRPC status code when a call fails (as
// grpcurl does), after printing the status to stderr.
'use strict';

const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const { GrpcReflection } = require('grpc-js-reflection-client');
const protobuf = require('protobufjs');

// The error details a server may send (google.rpc.Status in the
// grpc-status-details-bin trailer), as protos/third_party/google/rpc has them.
const rpcTypes = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        rpc: {
          nested: {
            Status: {
              fields: {
                code: {type: 'int32', id: 1},
                message: {type: 'string', id: 2},
                details: {rule: 'repeated', type: 'Any', id: 3},
              },
            },
            Any: {fields: {type_url: {type: 'string', id: 1}, value: {type: 'bytes', id: 2}}},
            ErrorInfo: {
              fields: {
                reason: {type: 'string', id: 1},
                domain: {type: 'string', id: 2},
                metadata: {keyType: 'string', type: 'string', id: 3},
              },
            },
            BadRequest: {
              fields: {field_violations: {rule: 'repeated', type: 'FieldViolation', id: 1}},
              nested: {
                FieldViolation: {
                  fields: {
                    field: {type: 'string', id: 1},
                    description: {type: 'string', id: 2},
                    reason: {type: 'string', id: 3},
                  },
                },
              },
            },
            ResourceInfo: {
              fields: {
                resource_type: {type: 'string', id: 1},
                resource_name: {type: 'string', id: 2},
                owner: {type: 'string', id: 3},
                description: {type: 'string', id: 4},
              },
            },
          },
        },
      },
    },
  },
});

// The details of a failed call as grpcurl prints them: one JSON object per
// detail, with its "@type"; '' when there are none.
function describeDetails(status) {
  const raw = status.metadata ? status.metadata.get('grpc-status-details-bin') : [];
  if (!raw || raw.length === 0) return '';
  let st;
  try {
    st = rpcTypes.lookupType('google.rpc.Status').decode(raw[0]);
  } catch (e) {
    return `  Details: (unreadable: ${e.message})\n`;
  }
  let out = '  Details:\n';
  st.details.forEach((any, i) => {
    const name = any.type_url.replace(/^.*\//, '');
    let body = {'@type': any.type_url};
    const type = rpcTypes.lookup(name);
    if (type instanceof protobuf.Type && name.startsWith('google.rpc.')) {
      body = Object.assign(body, type.toObject(type.decode(any.value), {defaults: false}));
    } else {
      body.value = Buffer.from(any.value).toString('base64');
    }
    out += `  ${i + 1})\t${JSON.stringify(body, null, 2).replace(/\n/g, '\n  \t')}\n`;
  });
  return out;
}

function usage(msg) {
  if (msg) process.stderr.write(`grpc-call: ${msg}\n`);
  process.stderr.write(
    'usage: grpc-call [-plaintext] [-H "name: value"]... [-d JSON|@|@file] [-max-time S] ' +
      'ADDR (list [SERVICE] | describe SYMBOL | Service/Method)\n');
  process.exit(2);
}

function parseArgs(argv) {
  const o = { headers: [], data: null, maxTime: 30, rest: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i].replace(/^--/, '-');
    const value = () => (i + 1 < argv.length ? argv[++i] : usage(`${a} needs a value`));
    if (a === '-plaintext') continue;  // the only transport this tool speaks
    else if (a === '-H') o.headers.push(value());
    else if (a === '-d') o.data = value();
    else if (a === '-max-time') o.maxTime = Number(value());
    else if (a.startsWith('-') && a.length > 1) usage(`unknown flag ${argv[i]}`);
    else o.rest.push(argv[i]);
  }
  if (o.rest.length < 2) usage();
  if (!(o.maxTime > 0)) usage('-max-time must be a positive number of seconds');
  return o;
}

// ---------------------------------------------------------------- proto3 JSON

const camel = (s) => s.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
const snake = (s) => s.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase());
const WRAPPERS = new Set(['DoubleValue', 'FloatValue', 'Int64Value', 'UInt64Value', 'Int32Value',
  'UInt32Value', 'BoolValue', 'StringValue', 'BytesValue'].map((n) => `google.protobuf.${n}`));
const LONG = new Set(['int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);

function fullName(t) { return t.fullName.replace(/^\./, ''); }

function rfc3339(seconds, nanos) {
  const iso = new Date(Number(seconds) * 1000).toISOString().replace(/\.\d{3}Z$/, '');
  if (!nanos) return `${iso}Z`;
  let frac = String(nanos).padStart(9, '0');
  frac = frac.endsWith('000000') ? frac.slice(0, 3) : frac.endsWith('000') ? frac.slice(0, 6) : frac;
  return `${iso}.${frac}Z`;
}

// A decoded message (protobufjs, longs as strings) → proto3 canonical JSON value.
function toJson(type, m) {
  switch (fullName(type)) {
    case 'google.protobuf.Timestamp':
      return rfc3339(m.seconds || 0, m.nanos || 0);
    case 'google.protobuf.Duration': {
      const nanos = m.nanos ? `.${String(Math.abs(m.nanos)).padStart(9, '0').replace(/0+$/, '')}` : '';
      return `${m.seconds || 0}${nanos}s`;
    }
    case 'google.protobuf.FieldMask':
      return (m.paths || []).map(camel).join(',');
    default:
      if (WRAPPERS.has(fullName(type))) return scalarToJson(type.fields.value, m.value);
  }
  const out = {};
  for (const f of type.fieldsArray) {
    const v = m[f.name];
    if (v === undefined || v === null) continue;
    const key = f.options && f.options.json_name ? f.options.json_name : camel(f.name);
    if (f.map) {
      if (Object.keys(v).length === 0) continue;
      out[key] = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, valueToJson(f, x)]));
    } else if (f.repeated) {
      if (v.length === 0) continue;
      out[key] = v.map((x) => valueToJson(f, x));
    } else {
      if (!f.partOf && !f.resolvedType && isDefault(f, v)) continue;  // proto3 omits defaults
      if (!f.partOf && f.resolvedType && !f.resolvedType.fields && isDefault(f, v)) continue;
      out[key] = valueToJson(f, v);
    }
  }
  return out;
}

function isDefault(f, v) {
  if (typeof v === 'string') return v === '' || (LONG.has(f.type) && v === '0');
  if (typeof v === 'number') return v === 0;
  if (typeof v === 'boolean') return v === false;
  if (v instanceof Uint8Array) return v.length === 0;
  return false;
}

function valueToJson(f, v) {
  const t = f.resolvedType;
  if (t && t.fields) return toJson(t, v);
  if (t && t.values) return t.valuesById[v] !== undefined ? t.valuesById[v] : v;  // enum name
  return scalarToJson(f, v);
}

function scalarToJson(f, v) {
  if (LONG.has(f.type)) return String(v);
  if (f.type === 'bytes') return Buffer.from(v).toString('base64');
  return v;
}

// proto3 JSON (camelCase or the proto's own names) → an object protobufjs'
// fromObject takes; throws naming the field it cannot read.
function fromJson(type, json, path) {
  switch (fullName(type)) {
    case 'google.protobuf.Timestamp': {
      const ms = Date.parse(json);
      if (typeof json !== 'string' || Number.isNaN(ms)) throw new Error(`${path}: not an RFC 3339 timestamp`);
      const frac = /\.(\d+)/.exec(json);
      return { seconds: String(Math.floor(ms / 1000)), nanos: frac ? Number(frac[1].padEnd(9, '0').slice(0, 9)) : 0 };
    }
    case 'google.protobuf.Duration': {
      const d = /^(-?\d+)(?:\.(\d{1,9}))?s$/.exec(String(json));
      if (!d) throw new Error(`${path}: not a duration such as "1.5s"`);
      return { seconds: d[1], nanos: d[2] ? Number(d[2].padEnd(9, '0')) * (d[1].startsWith('-') ? -1 : 1) : 0 };
    }
    case 'google.protobuf.FieldMask':
      if (typeof json !== 'string') throw new Error(`${path}: a field mask is a string such as "name,description"`);
      return { paths: json === '' ? [] : json.split(',').map((p) => snake(p.trim())) };
    default:
      if (WRAPPERS.has(fullName(type))) return { value: json };
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    throw new Error(`${path || 'request'}: expected a JSON object for ${fullName(type)}`);
  }
  const byName = new Map();
  for (const f of type.fieldsArray) {
    byName.set(f.name, f);
    byName.set(camel(f.name), f);
    if (f.options && f.options.json_name) byName.set(f.options.json_name, f);
  }
  const out = {};
  for (const [k, v] of Object.entries(json)) {
    const f = byName.get(k);
    const where = path ? `${path}.${k}` : k;
    if (!f) throw new Error(`${where}: no such field in ${fullName(type)}`);
    if (v === null) continue;
    const t = f.resolvedType;
    const one = (x, w) => (t && t.fields ? fromJson(t, x, w) : x);
    if (f.map) out[f.name] = Object.fromEntries(Object.entries(v).map(([mk, x]) => [mk, one(x, `${where}.${mk}`)]));
    else if (f.repeated) {
      if (!Array.isArray(v)) throw new Error(`${where}: expected a JSON array`);
      out[f.name] = v.map((x, i) => one(x, `${where}[${i}]`));
    } else out[f.name] = one(v, where);
  }
  return out;
}

// ---------------------------------------------------------------- commands

function describeService(svc) {
  const lines = [`${fullName(svc)} is a service:`, `service ${svc.name} {`];
  for (const m of svc.methodsArray) lines.push(`  ${rpcLine(m)}`);
  lines.push('}');
  return lines.join('\n');
}

function rpcLine(m) {
  m.resolve();
  const req = (m.requestStream ? 'stream ' : '') + fullName(m.resolvedRequestType);
  const resp = (m.responseStream ? 'stream ' : '') + fullName(m.resolvedResponseType);
  return `rpc ${m.name} ( .${req} ) returns ( .${resp} );`;
}

function describeMethod(m) {
  return `${fullName(m)} is a method:\n${rpcLine(m)}`;
}

function describeType(t) {
  if (t.values) {
    return [`${fullName(t)} is an enum:`, `enum ${t.name} {`,
      ...Object.entries(t.values).map(([n, v]) => `  ${n} = ${v};`), '}'].join('\n');
  }
  const lines = [`${fullName(t)} is a message:`, `message ${t.name} {`];
  for (const f of t.fieldsArray) {
    f.resolve();
    const ty = f.resolvedType ? `.${fullName(f.resolvedType)}` : f.type;
    const kind = f.map ? `map<${f.keyType}, ${ty}>` : (f.repeated ? `repeated ${ty}` : ty);
    lines.push(`  ${kind} ${f.name} = ${f.id};`);
  }
  lines.push('}');
  return lines.join('\n');
}

function metadataOf(headers) {
  const md = new grpc.Metadata();
  for (const h of headers) {
    const i = h.indexOf(':');
    if (i <= 0) usage(`-H "${h}": expected "name: value"`);
    md.add(h.slice(0, i).trim().toLowerCase(), h.slice(i + 1).trim());
  }
  return md;
}

function readData(data) {
  if (data === null) return {};
  let text = data;
  if (data === '@') text = fs.readFileSync(0, 'utf8');
  else if (data.startsWith('@')) text = fs.readFileSync(data.slice(1), 'utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    usage(`-d is not valid JSON: ${e.message}`);
  }
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  const [addr, command, ...args] = o.rest;
  const creds = grpc.credentials.createInsecure();
  const deadline = () => new Date(Date.now() + o.maxTime * 1000);
  const reflection = new GrpcReflection(addr, creds);
  const reflect = (symbol) => reflection.getDescriptorBySymbol(symbol, { deadline: deadline() })
    .then((d) => d.getProtobufJsRoot());

  if (command === 'list') {
    if (args.length === 0) {
      const services = await reflection.listServices('', { deadline: deadline() });
      process.stdout.write(services.sort().join('\n') + '\n');
      return 0;
    }
    const svc = (await reflect(args[0])).lookupService(args[0]);
    process.stdout.write(svc.methodsArray.map((m) => `${args[0]}.${m.name}`).join('\n') + '\n');
    return 0;
  }
  if (command === 'describe') {
    if (args.length !== 1) usage('describe takes one symbol');
    const symbol = args[0].replace(/^\./, '');
    const root = await reflect(symbol).catch((e) => {
      throw new Error(`symbol ${symbol}: ${e.details || e.message}`);
    });
    const found = root.lookup(symbol);
    if (!found) throw new Error(`symbol ${symbol} not found`);
    const text = found.methods ? describeService(found)
      : found.resolvedRequestType !== undefined ? describeMethod(found) : describeType(found);
    process.stdout.write(text + '\n');
    return 0;
  }
  if (args.length !== 0) usage(`unexpected argument ${args[0]}`);
  const m = /^\.?([\w.]+)[/.](\w+)$/.exec(command);
  if (!m) usage(`"${command}" is not list, describe or Service/Method`);
  const [, serviceName, methodName] = m;
  const svc = (await reflect(serviceName)).lookupService(serviceName);
  const method = svc.methods[methodName];
  if (!method) throw new Error(`service ${serviceName} has no method ${methodName}`);
  method.resolve();
  const reqType = method.resolvedRequestType;
  const respType = method.resolvedResponseType;
  if (method.requestStream) throw new Error('client-streaming methods are not supported');
  let request;
  try {
    request = reqType.fromObject(fromJson(reqType, readData(o.data), ''));
  } catch (e) {
    usage(`-d: ${e.message}`);
  }
  const client = new grpc.Client(addr, creds);
  const path = `/${serviceName}/${methodName}`;
  const serialize = (x) => Buffer.from(reqType.encode(x).finish());
  const deserialize = (b) => respType.toObject(respType.decode(b), { longs: String, bytes: Array });
  const print = (resp) => process.stdout.write(JSON.stringify(toJson(respType, resp), null, 2) + '\n');
  const md = metadataOf(o.headers);
  const status = await new Promise((resolve) => {
    const failed = (err) => resolve(err);
    if (method.responseStream) {
      const call = client.makeServerStreamRequest(path, serialize, deserialize, request, md,
        { deadline: deadline() });
      call.on('data', print);
      call.on('error', failed);
      call.on('end', () => resolve(null));
    } else {
      client.makeUnaryRequest(path, serialize, deserialize, request, md, { deadline: deadline() },
        (err, resp) => { if (err) failed(err); else { print(resp); resolve(null); } });
    }
  });
  client.close();
  if (!status) return 0;
  const codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === status.code) || status.code;
  process.stderr.write(
      `ERROR:\n  Code: ${codeName}\n  Message: ${status.details}\n` + describeDetails(status));
  return 64 + status.code;
}

main().then((code) => process.exit(code), (e) => {
  process.stderr.write(`grpc-call: ${e.details || e.message}\n`);
  process.exit(1);
});
