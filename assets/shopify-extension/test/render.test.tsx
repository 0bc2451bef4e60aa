// `npm test`: what the block renders, as markup, with a stand-in for Shopify's `shopify` global.
// Effects (the request) do not run in render-to-string, so the customer view is the first render.
import assert from 'node:assert/strict';
import {readFileSync} from 'node:fs';
import {join} from 'node:path';
import {beforeEach, describe, test} from 'node:test';
import {renderToString} from 'preact-render-to-string';

import {Extension, OfferCard} from '../src/ThankYou';
import type {OfferResponse} from '../src/offer';

const en: Record<string, string> = JSON.parse(readFileSync(join(process.cwd(), 'locales/en.default.json'), 'utf8'));

function fakeShopify(opts: {editor?: boolean; settings?: Record<string, string>; network?: boolean} = {}) {
  return {
    settings: {value: opts.settings ?? {appliance_url: 'https://upsell.example.com', store_id: 'main'}},
    orderConfirmation: {value: {order: {id: 'gid://shopify/OrderIdentity/123456'}, isFirstOrder: false}},
    extension: {
      editor: opts.editor ? {type: 'checkout'} : undefined,
      capabilities: {value: opts.network === false ? [] : ['network_access']},
    },
    localization: {currency: {value: {isoCode: 'USD'}}},
    sessionToken: {get: async () => 'token'},
    i18n: {
      translate: (key: string, r: Record<string, string> = {}) =>
        (en[key] ?? `MISSING ${key}`).replace(/\{\{(\w+)\}\}/g, (_, k) => r[k] ?? `MISSING ${k}`),
      formatCurrency: (v: number, o: {currency: string}) =>
        new Intl.NumberFormat('en-US', {style: 'currency', currency: o.currency}).format(v),
    },
  };
}

function response(): OfferResponse {
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
    expires_at: '2099-01-01T00:00:00Z',
    accept_url: 'https://upsell.example.com/v1/offers/main/123456/accept?t=abc',
    decline_url: 'https://upsell.example.com/v1/offers/main/123456/decline?t=abc',
  };
}

/** The markup without attributes' order mattering: each element's tag and attributes. */
function elements(html: string): Array<{tag: string; attrs: Record<string, string>}> {
  return [...html.matchAll(/<(s-[a-z-]+)([^>]*)>/g)].map(([, tag, rest]) => ({
    tag,
    attrs: Object.fromEntries([...rest.matchAll(/([\w-]+)(?:="([^"]*)")?/g)].map(([, k, v]) => [k, v ?? ''])),
  }));
}

beforeEach(() => {
  (globalThis as any).shopify = fakeShopify();
});

describe('the offer card', () => {
  test('image, title, prices, saving, code, and the two controls', () => {
    const html = renderToString(<OfferCard response={response()} />);
    const els = elements(html);

    const image = els.find((e) => e.tag === 's-image');
    assert.ok(image, html);
    assert.equal(image.attrs.src, 'https://cdn.example.com/x.jpg');
    assert.equal(image.attrs.alt, 'Coffee scale');
    assert.equal(image.attrs.aspectRatio, '1/1');
    assert.equal(els.find((e) => e.tag === 's-box')?.attrs.inlineSize, '96px');

    assert.match(html, /Coffee scale/);
    assert.match(html, /\$24\.00/);
    assert.match(html, /<s-text type="redundant"[^>]*>\$30\.00<\/s-text>/);
    assert.match(html, /You save \$6\.00/);
    assert.match(html, /Code THANKS10 is applied at checkout/);

    const [accept, decline] = els.filter((e) => e.tag === 's-button');
    assert.equal(accept.attrs.href, response().accept_url.replace(/&/g, '&amp;'));
    assert.equal(accept.attrs.target, '_blank');
    assert.equal(accept.attrs.variant, 'primary');
    assert.ok(!('disabled' in accept.attrs));
    assert.match(html, />Buy it now \(separate order\)<\/s-button>/);
    assert.match(accept.attrs.accessibilityLabel, /^Buy it now \(separate order\): Coffee scale\./);
    assert.match(html, /Opens a new checkout in a new tab/);
    assert.ok(!('href' in decline.attrs));
    assert.match(html, />No thanks<\/s-button>/);
    assert.equal(decline.attrs.accessibilityLabel, 'No thanks, hide the offer for Coffee scale');
    assert.doesNotMatch(html, /MISSING/);
  });

  test('no image, compare-at, saving or code: those parts are left out', () => {
    const r = response();
    r.offer = {...r.offer, image_url: null, compare_at_price: null, saving: null, discount_code: null};
    const html = renderToString(<OfferCard response={r} />);
    assert.doesNotMatch(html, /<s-image|<s-box|redundant|You save|Code /);
    assert.match(html, /gridTemplateColumns="1fr"/);
    assert.match(html, /\$24\.00/);
  });

  test('prices use the offer currency', () => {
    const r = response();
    r.offer.currency = 'EUR';
    assert.match(renderToString(<OfferCard response={r} />), /€24\.00/);
  });
});

describe('the block', () => {
  test('for a customer, nothing while the offer loads (no placeholder that may vanish)', () => {
    assert.equal(renderToString(<Extension />), '');
  });

  test('in the checkout editor without settings: what to fill in', () => {
    (globalThis as any).shopify = fakeShopify({editor: true, settings: {}, network: false});
    const html = renderToString(<Extension />);
    assert.match(html, /<s-banner/);
    assert.ok(html.includes(en.editorApplianceUrl), html);
    assert.match(html, /Store id: /);
    assert.match(html, /Network access is not allowed/);
  });

  test('in the checkout editor with settings: a sample card whose button goes nowhere', () => {
    (globalThis as any).shopify = fakeShopify({editor: true});
    const html = renderToString(<Extension />);
    assert.match(html, /Preview with sample data/);
    const accept = elements(html).find((e) => e.tag === 's-button');
    assert.ok(accept && !('href' in accept.attrs) && 'disabled' in accept.attrs, html);
  });
});
