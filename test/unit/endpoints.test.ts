import assert from 'node:assert/strict';
import { test } from 'node:test';
import { controlUrl, dataUrl, isLoopbackHost } from '../../src/agent/net/endpoints.js';
import { ErrorCodes } from '../../src/agent/errors.js';

test('control URL: scheme mapping, default ports, base path, runner id', () => {
  const cases: [string, string][] = [
    ['http://api.example.com', 'ws://api.example.com/api/v1/revdial?runnerid=wolf-wolf-1'],
    ['https://api.example.com/', 'wss://api.example.com/api/v1/revdial?runnerid=wolf-wolf-1'],
    ['https://api.example.com:8443/helix/', 'wss://api.example.com:8443/helix/api/v1/revdial?runnerid=wolf-wolf-1'],
    ['ws://127.0.0.1:8080/base', 'ws://127.0.0.1:8080/base/api/v1/revdial?runnerid=wolf-wolf-1'],
    ['wss://[::1]:9000', 'wss://[::1]:9000/api/v1/revdial?runnerid=wolf-wolf-1'],
  ];
  for (const [api, want] of cases) assert.equal(controlUrl(new URL(api), 'wolf-wolf-1').href, want, api);
});

test('data URL: the advertised /revdial becomes [/base]/api/v1/revdial, query kept byte for byte', () => {
  const q = 'revdial.dialer=0123456789abcdef0123456789abcdef&revdial.req=fedcba9876543210fedcba9876543210';
  assert.equal(dataUrl(new URL('https://api.example.com'), `/revdial?${q}`).href, `wss://api.example.com/api/v1/revdial?${q}`);
  assert.equal(dataUrl(new URL('http://h:81/helix/'), `/revdial?${q}`).href, `ws://h:81/helix/api/v1/revdial?${q}`);
  // Older control planes: no revdial.req.
  assert.equal(dataUrl(new URL('http://h'), '/revdial?revdial.dialer=00ff').href, 'ws://h/api/v1/revdial?revdial.dialer=00ff');
  // A full path is used as is.
  assert.equal(dataUrl(new URL('http://h/helix'), `/api/v1/revdial?${q}`).href, `ws://h/api/v1/revdial?${q}`);
  // Only a whole "/revdial" segment is rewritten.
  assert.equal(dataUrl(new URL('http://h'), '/revdialx?a=1').href, 'ws://h/revdialx?a=1');
});

test('a connPath that could name another origin is refused', () => {
  const api = new URL('https://api.example.com');
  for (const bad of [
    'http://evil.example/revdial?x=1',
    'wss://evil.example/revdial',
    '//evil.example/revdial',
    '/\\evil.example/revdial',
    '\\\\evil.example/revdial',
    'revdial?x=1',
    '',
    ' /revdial',
    '/revdial?x=1\n',
    'javascript:alert(1)',
  ]) {
    assert.throws(() => dataUrl(api, bad), { code: ErrorCodes.CONN_PATH_INVALID }, JSON.stringify(bad));
  }
});

test('loopback hosts', () => {
  for (const h of ['localhost', '127.0.0.1', '127.1.2.3', '[::1]', 'a.localhost']) assert.equal(isLoopbackHost(h), true, h);
  for (const h of ['api.example.com', '10.0.0.1', '128.0.0.1', 'localhost.example.com']) assert.equal(isLoopbackHost(h), false, h);
});

test('a base path that would move the control URL to another host is refused', () => {
  for (const api of ['https://api.example.com//evil.example/', 'https://api.example.com/\\evil.example/']) {
    assert.throws(() => controlUrl(new URL(api), 'wolf-x'), { code: ErrorCodes.CONFIG_INVALID }, api);
  }
});
