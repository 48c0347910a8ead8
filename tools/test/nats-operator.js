#!/usr/bin/env node
// A NATS server in operator mode for the credentials test
// (tests/partners_health_test.cc): writes DIR/nats.conf (an operator, a
// system account and an account with JetStream, all preloaded into a memory
// resolver, listening on 127.0.0.1:PORT) and DIR/service.creds, the
// credentials of a user of that account, as `nsc` would.
//   node tools/test/nats-operator.js DIR PORT
'use strict';
const fs = require('fs');
const path = require('path');
const {createOperator, createAccount, createUser} = require('@nats-io/nkeys');
const {encodeOperator, encodeAccount, encodeUser, fmtCreds} = require('@nats-io/jwt');

(async () => {
  const [dir, port] = process.argv.slice(2);
  if (!dir || !port) throw new Error('usage: nats-operator.js DIR PORT');
  const operator = createOperator(), account = createAccount(), system = createAccount();
  const user = createUser();
  const unlimited = {
    subs: -1,
    data: -1,
    payload: -1,
    imports: -1,
    exports: -1,
    wildcards: true,
    conn: -1,
    leaf: -1,
    mem_storage: -1,
    disk_storage: -1,
    streams: -1,
    consumer: -1,
  };
  const operatorJwt = await encodeOperator('test-operator', operator);
  const accountJwt =
      await encodeAccount('connecting', account, {limits: unlimited}, {signer: operator});
  const systemJwt = await encodeAccount('SYS', system, {}, {signer: operator});
  const userJwt = await encodeUser('service', user, account);
  fs.writeFileSync(path.join(dir, 'service.creds'), fmtCreds(userJwt, user));
  fs.writeFileSync(path.join(dir, 'nats.conf'), [
    `listen: 127.0.0.1:${port}`,
    `jetstream { store_dir: "${path.join(dir, 'js')}" }`,
    `operator: ${operatorJwt}`,
    `system_account: ${system.getPublicKey()}`,
    'resolver: MEMORY',
    `resolver_preload: { ${account.getPublicKey()}: ${accountJwt}, ` +
        `${system.getPublicKey()}: ${systemJwt} }`,
  ].join('\n') + '\n');
})().catch((e) => {
  console.error(e.message || e);
  process.exit(1);
});
