'use strict';
/**
 * A dependency-free Node.js (>= 18) client for sentinel-stream's HTTP API.
 *
 *   const { SentinelClient } = require('./sentinel-client');
 *   const client = new SentinelClient({ baseUrl: 'http://127.0.0.1:8000', failOpen: true });
 *   const verdict = await client.analyzeFlow({ latency: 120, input_length: 300, errors: 0, route: '/api/x' });
 *   if (verdict.status === 'THREAT_DETECTED') { ... verdict.reason ... }
 *
 * - Every call has a timeout (`timeoutMs`, default 2000).
 * - Network errors, timeouts and 5xx answers are retried (`retries`, default 2) with
 *   exponential backoff and full jitter (`backoffMs`, default 100, doubling, capped at
 *   `maxBackoffMs`). A 4xx is the caller's mistake and is never retried: it throws a
 *   SentinelError carrying the status and the server's JSON error (fields named).
 * - `failOpen: true`: when the service cannot answer after the retries, analyzeFlow
 *   resolves to `{ status: 'OK', failOpen: true, error }` instead of throwing, so a
 *   detector outage never blocks the caller's traffic. 4xx still throw.
 */

class SentinelError extends Error {
  constructor(message, { status = null, body = null, cause = null } = {}) {
    super(message);
    this.name = 'SentinelError';
    this.status = status;
    this.body = body;
    if (cause) this.cause = cause;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class SentinelClient {
  constructor({
    baseUrl = 'http://127.0.0.1:8000',
    timeoutMs = 2000,
    retries = 2,
    backoffMs = 100,
    maxBackoffMs = 2000,
    failOpen = false,
    fetchImpl = globalThis.fetch,
  } = {}) {
    if (typeof fetchImpl !== 'function') throw new Error('fetch is not available (Node >= 18 needed)');
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    this.timeoutMs = timeoutMs;
    this.retries = retries;
    this.backoffMs = backoffMs;
    this.maxBackoffMs = maxBackoffMs;
    this.failOpen = failOpen;
    this.fetch = fetchImpl;
    this.attempts = 0; // total HTTP attempts made, for tests and metrics
  }

  async analyzeFlow(event) {
    try {
      return await this._request('POST', '/analyze-flow', event);
    } catch (err) {
      if (this.failOpen && !(err instanceof SentinelError && err.status !== null && err.status < 500)) {
        return { status: 'OK', failOpen: true, error: String(err.message || err) };
      }
      throw err;
    }
  }

  async health() {
    return this._request('GET', '/health', undefined, { acceptStatus: [200, 503] });
  }

  async _request(method, path, body, { acceptStatus = [200] } = {}) {
    let lastError = null;
    for (let attempt = 0; attempt <= this.retries; attempt += 1) {
      if (attempt > 0) {
        const cap = Math.min(this.maxBackoffMs, this.backoffMs * 2 ** (attempt - 1));
        await sleep(Math.random() * cap);
      }
      this.attempts += 1;
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), this.timeoutMs);
      let response;
      try {
        response = await this.fetch(this.baseUrl + path, {
          method,
          headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: controller.signal,
        });
        const text = await response.text();
        clearTimeout(timer);
        let data = null;
        try {
          data = text ? JSON.parse(text) : null;
        } catch (_) {
          data = null;
        }
        if (acceptStatus.includes(response.status)) {
          if (data === null) throw new SentinelError(`invalid JSON from ${path}`, { status: response.status });
          return data;
        }
        const err = new SentinelError(`${method} ${path} answered ${response.status}`, {
          status: response.status,
          body: data,
        });
        if (response.status < 500) throw err; // 4xx: never retried
        lastError = err;
      } catch (err) {
        clearTimeout(timer);
        if (err instanceof SentinelError && err.status !== null && err.status < 500) throw err;
        lastError = err.name === 'AbortError'
          ? new SentinelError(`${method} ${path} timed out after ${this.timeoutMs} ms`, { cause: err })
          : err;
      }
    }
    throw lastError instanceof SentinelError
      ? lastError
      : new SentinelError(`${method} ${path} failed: ${lastError && lastError.message}`, { cause: lastError });
  }
}

module.exports = { SentinelClient, SentinelError };
