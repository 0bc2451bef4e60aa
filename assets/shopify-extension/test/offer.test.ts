// `npm test`: the extension's Shopify-free logic under node:test, and the folder's files
// agreeing with each other. Bundled by esbuild first (types are checked by `npm run build`).
import assert from 'node:assert/strict';
import {existsSync, readFileSync} from 'node:fs';
import {join} from 'node:path';
import {describe, test} from 'node:test';

import {MESSAGE_KEYS} from '../src/messages';
import {
  type FetchLike,
  RETRY_DELAYS_MS,
  fetchOffer,
  formatMoney,
  msUntilExpiry,
  offerUrl,
  orderIdFromGid,
  parseOfferResponse,
  readSettings,
  sendDecline,
} from '../src/offer';

const root = process.cwd();
const NOW = Date.parse('2026-11-22T12:00:00Z');

function sample(): Record<string, any> {
  return {
    offer: {
      title: 'Coffee scale',
      image_url: 'https://cdn.example.com/x.jpg',
      price: '24.00',
      compare_at_price: '30.00',
      currency: 'USD',
      discount_code: 'THANKS10',
      saving: '6.00',
    },
    expires_at: '2026-11-29T10:00:00Z',
    accept_url: 'https://upsell.example.com/v1/offers/main/123456/accept?t=abc',
    decline_url: 'https://upsell.example.com/v1/offers/main/123456/decline?t=abc',
  };
}

describe('settings', () => {
  test('a plain URL and store id', () => {
    assert.deepEqual(readSettings({appliance_url: 'https://upsell.example.com', store_id: 'main'}), {
      ok: true,
      settings: {applianceUrl: 'https://upsell.example.com', storeId: 'main'},
    });
  });
  test('trailing slashes, a path prefix and spaces are tidied', () => {
    const r = readSettings({appliance_url: ' https://example.com/upsell/ ', store_id: ' shop_2 '});
    assert.deepEqual(r, {ok: true, settings: {applianceUrl: 'https://example.com/upsell', storeId: 'shop_2'}});
  });
  test('missing, http, a query, or a store id outside a-z 0-9 - _ are refused', () => {
    assert.deepEqual(readSettings(undefined), {ok: false, problems: ['appliance_url', 'store_id']});
    assert.deepEqual(readSettings({}), {ok: false, problems: ['appliance_url', 'store_id']});
    assert.deepEqual(readSettings({appliance_url: 'http://upsell.example.com', store_id: 'main'}), {
      ok: false,
      problems: ['appliance_url'],
    });
    assert.deepEqual(readSettings({appliance_url: 'https://u.example.com/?x=1', store_id: 'main'}), {
      ok: false,
      problems: ['appliance_url'],
    });
    assert.deepEqual(readSettings({appliance_url: 'https://u.example.com', store_id: 'Main'}), {
      ok: false,
      problems: ['store_id'],
    });
    assert.deepEqual(readSettings({appliance_url: 'https://u.example.com', store_id: 'a/b'}), {
      ok: false,
      problems: ['store_id'],
    });
  });
});

describe('order id', () => {
  test('the numeric id from a gid', () => {
    assert.equal(orderIdFromGid('gid://shopify/OrderIdentity/123456'), '123456');
    assert.equal(orderIdFromGid('gid://shopify/Order/123'), '123');
    assert.equal(orderIdFromGid('123456'), '123456');
  });
  test('anything else is no id', () => {
    assert.equal(orderIdFromGid(undefined), null);
    assert.equal(orderIdFromGid(''), null);
    assert.equal(orderIdFromGid('gid://shopify/OrderIdentity/abc'), null);
    assert.equal(orderIdFromGid('gid://shopify/OrderIdentity/12/../3'), null);
  });
  test('the offer URL', () => {
    assert.equal(
      offerUrl({applianceUrl: 'https://upsell.example.com', storeId: 'main'}, '123456'),
      'https://upsell.example.com/v1/offers/main/123456',
    );
  });
});

describe('offer body', () => {
  test('the contract example is accepted as is', () => {
    const r = parseOfferResponse(sample(), NOW);
    assert.deepEqual(r, sample());
    assert.ok(r && msUntilExpiry(r, NOW) > 0);
  });
  test('nulls and absent optional fields are null', () => {
    const body = sample();
    body.offer.image_url = null;
    body.offer.compare_at_price = null;
    body.offer.discount_code = null;
    delete body.offer.saving;
    const r = parseOfferResponse(body, NOW);
    assert.ok(r);
    assert.equal(r.offer.image_url, null);
    assert.equal(r.offer.compare_at_price, null);
    assert.equal(r.offer.discount_code, null);
    assert.equal(r.offer.saving, null);
  });
  test('an expired offer is no offer', () => {
    const body = sample();
    body.expires_at = '2026-11-22T11:59:59Z';
    assert.equal(parseOfferResponse(body, NOW), null);
    body.expires_at = 'soon';
    assert.equal(parseOfferResponse(body, NOW), null);
  });
  test('an image that is not https is left out', () => {
    const body = sample();
    body.offer.image_url = 'http://cdn.example.com/x.jpg';
    assert.equal(parseOfferResponse(body, NOW)?.offer.image_url, null);
  });
  test('malformed bodies are no offer', () => {
    const broken: Array<(b: Record<string, any>) => void> = [
      (b) => delete b.offer,
      (b) => (b.offer.title = '  '),
      (b) => (b.offer.price = 24),
      (b) => (b.offer.price = '24,00'),
      (b) => (b.offer.compare_at_price = 'n/a'),
      (b) => (b.offer.saving = '-1'),
      (b) => (b.offer.currency = 'usd'),
      (b) => (b.offer.discount_code = ''),
      (b) => (b.accept_url = 'http://upsell.example.com/accept'),
      (b) => (b.accept_url = 'javascript:alert(1)'),
      (b) => delete b.decline_url,
      (b) => delete b.expires_at,
    ];
    for (const breakIt of broken) {
      const body = sample();
      breakIt(body);
      assert.equal(parseOfferResponse(body, NOW), null, JSON.stringify(body));
    }
    assert.equal(parseOfferResponse(null, NOW), null);
    assert.equal(parseOfferResponse([sample()], NOW), null);
  });
});

/** A fake fetch answering from `answers` in turn: a status, 'throw', 'hang', or 'bad-json'. */
function fakeServer(answers: Array<number | 'throw' | 'hang' | 'bad-json'>) {
  const calls: Array<{url: string; init: Parameters<FetchLike>[1]}> = [];
  const fetch: FetchLike = (url, init) => {
    calls.push({url, init});
    const a = answers[Math.min(calls.length - 1, answers.length - 1)];
    if (a === 'throw') return Promise.reject(new TypeError('Failed to fetch'));
    if (a === 'hang') {
      return new Promise((_, reject) => init.signal?.addEventListener('abort', () => reject(new Error('aborted'))));
    }
    return Promise.resolve({
      status: a === 'bad-json' ? 200 : a,
      json: () => (a === 200 ? Promise.resolve(sample()) : Promise.reject(new SyntaxError('not JSON'))),
    });
  };
  return {fetch, calls};
}

function deps(fetch: FetchLike, extra: Partial<Parameters<typeof fetchOffer>[1]> = {}) {
  const slept: number[] = [];
  let tokens = 0;
  return {
    slept,
    tokens: () => tokens,
    deps: {
      fetch,
      getToken: async () => `token-${++tokens}`,
      sleep: async (ms: number) => {
        slept.push(ms);
      },
      now: () => NOW,
      isCancelled: () => false,
      ...extra,
    },
  };
}

const URL_ = 'https://upsell.example.com/v1/offers/main/123456';

describe('fetching the offer', () => {
  test('404s are retried with backoff and a fresh token each time', async () => {
    const server = fakeServer([404, 404, 200]);
    const d = deps(server.fetch);
    const r = await fetchOffer(URL_, d.deps);
    assert.deepEqual(r, sample());
    assert.deepEqual(d.slept, [1000, 2000]);
    assert.equal(d.tokens(), 3);
    assert.deepEqual(
      server.calls.map((c) => [c.url, c.init.method, c.init.headers?.Authorization]),
      [
        [URL_, 'GET', 'Bearer token-1'],
        [URL_, 'GET', 'Bearer token-2'],
        [URL_, 'GET', 'Bearer token-3'],
      ],
    );
  });
  test('always 404: six attempts over 1, 2, 4, 8, 15 s, then nothing', async () => {
    const server = fakeServer([404]);
    const d = deps(server.fetch);
    assert.equal(await fetchOffer(URL_, d.deps), null);
    assert.deepEqual(d.slept, [...RETRY_DELAYS_MS]);
    assert.deepEqual(d.slept, [1000, 2000, 4000, 8000, 15000]);
    assert.equal(server.calls.length, 6);
  });
  test('network errors, 429 and 5xx are retried', async () => {
    const server = fakeServer(['throw', 503, 429, 200]);
    const d = deps(server.fetch);
    assert.deepEqual(await fetchOffer(URL_, d.deps), sample());
    assert.equal(server.calls.length, 4);
  });
  test('a token that cannot be had is retried like a network error', async () => {
    const server = fakeServer([200]);
    let n = 0;
    const d = deps(server.fetch, {
      getToken: async () => {
        if (++n === 1) throw new Error('no token yet');
        return 'token';
      },
    });
    assert.deepEqual(await fetchOffer(URL_, d.deps), sample());
    assert.equal(server.calls.length, 1);
    assert.deepEqual(d.slept, [1000]);
  });
  test('an attempt with no answer is abandoned after the timeout and retried', async () => {
    const server = fakeServer(['hang', 200]);
    const d = deps(server.fetch, {attemptTimeoutMs: 20});
    assert.deepEqual(await fetchOffer(URL_, d.deps), sample());
    assert.equal(server.calls.length, 2);
  });
  test('other statuses and a 200 that is not an offer end it at once', async () => {
    for (const answer of [400, 401, 403, 'bad-json'] as const) {
      const server = fakeServer([answer, 200]);
      const d = deps(server.fetch);
      assert.equal(await fetchOffer(URL_, d.deps), null, String(answer));
      assert.equal(server.calls.length, 1);
    }
  });
  test('an expired offer in a 200 ends it', async () => {
    const server = fakeServer([200]);
    const d = deps(server.fetch, {now: () => Date.parse('2027-01-01T00:00:00Z')});
    assert.equal(await fetchOffer(URL_, d.deps), null);
    assert.equal(server.calls.length, 1);
  });
  test('stops when cancelled', async () => {
    const server = fakeServer([404]);
    let cancelled = false;
    const d = deps(server.fetch, {
      isCancelled: () => cancelled,
      sleep: async () => {
        cancelled = true;
      },
    });
    assert.equal(await fetchOffer(URL_, d.deps), null);
    assert.equal(server.calls.length, 1);
  });
});

describe('declining', () => {
  test('POST with no body and no header (no CORS preflight)', async () => {
    const server = fakeServer([204]);
    assert.equal(await sendDecline('https://u.example.com/decline?t=1', server.fetch), true);
    assert.deepEqual(server.calls, [{url: 'https://u.example.com/decline?t=1', init: {method: 'POST'}}]);
  });
  test('never throws', async () => {
    assert.equal(await sendDecline('https://u.example.com/d', fakeServer(['throw']).fetch), false);
    assert.equal(await sendDecline('https://u.example.com/d', fakeServer([404]).fetch), false);
  });
});

describe('money', () => {
  test("Shopify's formatter first", () => {
    assert.equal(
      formatMoney('24.00', 'EUR', (v, c) => `${c} ${v.toFixed(2)}`),
      'EUR 24.00',
    );
  });
  test('Intl when that throws, plain text when Intl cannot either', () => {
    const viaIntl = formatMoney('24.00', 'USD', () => {
      throw new Error('no i18n');
    });
    assert.match(viaIntl, /24\.00/);
    assert.notEqual(viaIntl, '24.00 USD');
    assert.equal(formatMoney('24.00', 'US'), '24.00 US');
  });
});

describe('the folder agrees with itself', () => {
  test('locales/en.default.json has exactly the keys the code uses, with their placeholders', () => {
    const en = JSON.parse(readFileSync(join(root, 'locales/en.default.json'), 'utf8'));
    assert.deepEqual(Object.keys(en).sort(), [...MESSAGE_KEYS].sort());
    for (const v of Object.values(en)) assert.equal(typeof v, 'string');
    assert.match(en.saving, /\{\{amount\}\}/);
    assert.match(en.code, /\{\{code\}\}/);
    assert.match(en.acceptLabel, /\{\{title\}\}/);
    assert.match(en.declineLabel, /\{\{title\}\}/);
  });
  test('shopify.extension.toml: target, module, network access, the two settings, API version', () => {
    const toml = readFileSync(join(root, 'shopify.extension.toml'), 'utf8');
    assert.match(toml, /^type = "ui_extension"$/m);
    assert.match(toml, /^target = "purchase\.thank-you\.block\.render"$/m);
    const module = /^module = "\.\/(src\/[^"]+)"$/m.exec(toml)?.[1];
    assert.ok(module && existsSync(join(root, module)), `module ${module}`);
    assert.match(toml, /^\[extensions\.capabilities\]\n[^[]*^network_access = true$/m);
    assert.match(toml, /^key = "appliance_url"$/m);
    assert.match(toml, /^key = "store_id"$/m);
    // shopify.d.ts types the `shopify` global for that same module.
    assert.ok(readFileSync(join(root, 'shopify.d.ts'), 'utf8').includes(`declare module './${module}'`));
    // api_version matches the installed @shopify/ui-extensions (2026.7.x <-> "2026-07").
    const api = /^api_version = "(\d{4})-(\d{2})"$/m.exec(toml);
    assert.ok(api);
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
    const [year, month] = pkg.dependencies['@shopify/ui-extensions'].split('.');
    assert.deepEqual([api[1], api[2]], [year, month.padStart(2, '0')]);
  });
});
