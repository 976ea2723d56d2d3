'use strict';
// node --test examples/sentinel-client.test.js
// Against a live service at SENTINEL_URL, and against stand-in servers on 127.0.0.1 for
// the failure modes (a server that answers 503, one that hangs).
const test = require('node:test');
const assert = require('node:assert');
const http = require('node:http');
const { SentinelClient, SentinelError } = require('./sentinel-client');

const live = process.env.SENTINEL_URL;

function standIn(handler) {
  return new Promise((resolve) => {
    const server = http.createServer(handler);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}
const urlOf = (server) => `http://127.0.0.1:${server.address().port}`;

test('live: the older smoke test is a threat, a normal request is OK', { skip: !live }, async () => {
  const client = new SentinelClient({ baseUrl: live, timeoutMs: 5000 });
  const threat = await client.analyzeFlow({ latency: 25000, input_length: 50000, errors: 15, route: '/node/smoke' });
  assert.strictEqual(threat.status, 'THREAT_DETECTED');
  assert.strictEqual(threat.action, 'freeze');
  assert.ok(threat.confidence >= 0 && threat.confidence <= 1);
  const ok = await client.analyzeFlow({ latency: 100, input_length: 300, errors: 0, route: '/node/ok', timestamp: new Date().toISOString() });
  assert.strictEqual(ok.status, 'OK');
  const health = await client.health();
  assert.strictEqual(health.status, 'healthy');
});

test('live: a 4xx throws at once with the named field, never retried', { skip: !live }, async () => {
  const client = new SentinelClient({ baseUrl: live, retries: 3, failOpen: true });
  await assert.rejects(client.analyzeFlow({ latency: 'fast', input_length: 1, errors: 0, route: '/x' }), (err) => {
    assert.ok(err instanceof SentinelError);
    assert.strictEqual(err.status, 422);
    assert.strictEqual(err.body.fields[0].field, 'latency');
    return true;
  });
  assert.strictEqual(client.attempts, 1);
});

test('5xx is retried with backoff until it succeeds', async () => {
  let calls = 0;
  const server = await standIn((req, res) => {
    calls += 1;
    if (calls < 3) { res.writeHead(503, { 'Content-Type': 'application/json' }); res.end('{"error":"busy"}'); return; }
    res.writeHead(200, { 'Content-Type': 'application/json' });
    res.end('{"status":"OK"}');
  });
  try {
    const client = new SentinelClient({ baseUrl: urlOf(server), retries: 3, backoffMs: 5 });
    assert.deepStrictEqual(await client.analyzeFlow({}), { status: 'OK' });
    assert.strictEqual(calls, 3);
  } finally { server.close(); }
});

test('a hanging server times out; fail-open answers OK, fail-closed throws', async () => {
  const server = await standIn(() => { /* never answers */ });
  try {
    const open = new SentinelClient({ baseUrl: urlOf(server), timeoutMs: 100, retries: 1, backoffMs: 1, failOpen: true });
    const started = Date.now();
    const verdict = await open.analyzeFlow({ latency: 1, input_length: 1, errors: 0, route: '/h' });
    assert.strictEqual(verdict.status, 'OK');
    assert.strictEqual(verdict.failOpen, true);
    assert.strictEqual(open.attempts, 2);
    assert.ok(Date.now() - started < 2000);
    const closed = new SentinelClient({ baseUrl: urlOf(server), timeoutMs: 100, retries: 0 });
    await assert.rejects(closed.analyzeFlow({}), /timed out/);
  } finally { server.closeAllConnections(); server.close(); }
});

test('network errors are retried then fail open', async () => {
  const server = await standIn(() => {});
  const url = urlOf(server);
  server.close();
  const client = new SentinelClient({ baseUrl: url, retries: 2, backoffMs: 1, failOpen: true });
  const verdict = await client.analyzeFlow({});
  assert.strictEqual(verdict.failOpen, true);
  assert.strictEqual(client.attempts, 3);
});
