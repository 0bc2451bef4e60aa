// The extension's logic that needs neither Shopify nor Preact: reading the settings, the
// order id, the offer request with its retries, and checking what upsell-appliance answered.
// Kept apart so that `npm test` runs it under plain Node.

/** One offer, as `GET /v1/offers/{store_id}/{order_id}` returns it. Prices are decimal strings. */
export interface Offer {
  title: string;
  image_url: string | null;
  price: string;
  compare_at_price: string | null;
  /** ISO 4217 */
  currency: string;
  discount_code: string | null;
  saving: string | null;
}

export interface OfferResponse {
  offer: Offer;
  /** RFC 3339 */
  expires_at: string;
  /** Plain GET link: records the acceptance, then redirects to the store's cart permalink. */
  accept_url: string;
  /** POST with no body. */
  decline_url: string;
}

export interface Settings {
  /** `appliance_url` without a trailing slash. */
  applianceUrl: string;
  storeId: string;
}

export type SettingsProblem = 'appliance_url' | 'store_id';

/**
 * Waits between attempts. The Thank you page often renders before the order's webhook reaches
 * upsell-appliance, which answers 404 until then: 6 attempts over about 30 s.
 */
export const RETRY_DELAYS_MS: readonly number[] = [1000, 2000, 4000, 8000, 15000];

/** One attempt that gets no answer within this is abandoned and counts as a network error. */
export const ATTEMPT_TIMEOUT_MS = 10000;

const STORE_ID = /^[a-z0-9_-]+$/;
const DECIMAL = /^\d+(\.\d+)?$/;
const CURRENCY = /^[A-Z]{3}$/;

/** The merchant's two settings, checked; or which one is missing or wrong. */
export function readSettings(
  raw: Record<string, string | number | boolean | undefined> | undefined,
): {ok: true; settings: Settings} | {ok: false; problems: SettingsProblem[]} {
  const problems: SettingsProblem[] = [];
  const url = httpsUrl(raw?.appliance_url);
  let applianceUrl = '';
  if (url && !url.search && !url.hash && !url.username && !url.password) {
    applianceUrl = (url.origin + url.pathname).replace(/\/+$/, '');
  } else {
    problems.push('appliance_url');
  }
  const storeId = typeof raw?.store_id === 'string' ? raw.store_id.trim() : '';
  if (!STORE_ID.test(storeId)) problems.push('store_id');
  if (problems.length > 0) return {ok: false, problems};
  return {ok: true, settings: {applianceUrl, storeId}};
}

/**
 * The numeric order id in an Order API id: "gid://shopify/OrderIdentity/123456" (or
 * ".../Order/123456", as some docs show it) gives "123456". Null for anything else.
 */
export function orderIdFromGid(gid: string | undefined | null): string | null {
  if (typeof gid !== 'string') return null;
  const m = /^gid:\/\/shopify\/[A-Za-z]+\/(\d+)(?:\?.*)?$/.exec(gid.trim());
  if (m) return m[1];
  return /^\d+$/.test(gid.trim()) ? gid.trim() : null;
}

export function offerUrl(settings: Settings, orderId: string): string {
  return `${settings.applianceUrl}/v1/offers/${encodeURIComponent(settings.storeId)}/${encodeURIComponent(orderId)}`;
}

/**
 * The 200 body, checked field by field; null when it is not an offer we can show (malformed,
 * or already expired at `nowMs`). Missing optional fields count as null.
 */
export function parseOfferResponse(body: unknown, nowMs: number): OfferResponse | null {
  if (!isRecord(body) || !isRecord(body.offer)) return null;
  const o = body.offer;
  const title = typeof o.title === 'string' ? o.title.trim() : '';
  if (!title) return null;
  if (!isDecimal(o.price)) return null;
  if (typeof o.currency !== 'string' || !CURRENCY.test(o.currency)) return null;
  const compareAt = optional(o.compare_at_price, isDecimal);
  const saving = optional(o.saving, isDecimal);
  if (compareAt === undefined || saving === undefined) return null;
  const code = optional(o.discount_code, (v): v is string => typeof v === 'string' && v.trim() !== '');
  if (code === undefined) return null;
  // An image we cannot load safely is left out rather than failing the whole offer.
  const image = httpsUrl(o.image_url) ? (o.image_url as string) : null;

  if (typeof body.expires_at !== 'string') return null;
  const expires = Date.parse(body.expires_at);
  if (Number.isNaN(expires) || expires <= nowMs) return null;
  if (!httpsUrl(body.accept_url) || !httpsUrl(body.decline_url)) return null;

  return {
    offer: {
      title,
      image_url: image,
      price: o.price,
      compare_at_price: compareAt,
      currency: o.currency,
      discount_code: code === null ? null : code.trim(),
      saving,
    },
    expires_at: body.expires_at,
    accept_url: body.accept_url as string,
    decline_url: body.decline_url as string,
  };
}

/** Milliseconds until the offer expires (<= 0 when it has). */
export function msUntilExpiry(response: OfferResponse, nowMs: number): number {
  return Date.parse(response.expires_at) - nowMs;
}

/** The subset of `fetch` this file uses, so tests can stand in for it. */
export type FetchLike = (
  url: string,
  init: {method?: 'GET' | 'POST'; headers?: Record<string, string>; signal?: AbortSignal},
) => Promise<{status: number; json(): Promise<unknown>}>;

export interface FetchOfferDeps {
  fetch: FetchLike;
  /** A session token for this attempt (Shopify's `sessionToken.get()`, which caches). */
  getToken: () => Promise<string>;
  sleep: (ms: number) => Promise<void>;
  now: () => number;
  /** True once the extension no longer needs the answer: stop retrying. */
  isCancelled: () => boolean;
  delays?: readonly number[];
  attemptTimeoutMs?: number;
}

type Attempt = {kind: 'offer'; response: OfferResponse} | {kind: 'retry'} | {kind: 'give-up'};

/**
 * Asks upsell-appliance for the order's offer. A 404 (not known yet, or no offer: the two look
 * the same), a network error, a timeout, 408, 429 or 5xx is retried after each of `delays`; any
 * other answer, or a 200 whose body is not a showable offer, ends it. Null means: show nothing.
 */
export async function fetchOffer(url: string, deps: FetchOfferDeps): Promise<OfferResponse | null> {
  const delays = deps.delays ?? RETRY_DELAYS_MS;
  for (let attempt = 0; ; attempt++) {
    if (deps.isCancelled()) return null;
    const result = await attemptOnce(url, deps);
    if (result.kind === 'offer') return result.response;
    if (result.kind === 'give-up' || attempt >= delays.length) return null;
    await deps.sleep(delays[attempt]);
  }
}

async function attemptOnce(url: string, deps: FetchOfferDeps): Promise<Attempt> {
  const controller = typeof AbortController === 'function' ? new AbortController() : undefined;
  const timer = controller
    ? setTimeout(() => controller.abort(), deps.attemptTimeoutMs ?? ATTEMPT_TIMEOUT_MS)
    : undefined;
  try {
    const token = await deps.getToken();
    const response = await deps.fetch(url, {
      method: 'GET',
      headers: {Authorization: `Bearer ${token}`},
      signal: controller?.signal,
    });
    const status = response.status;
    if (status === 200) {
      let body: unknown;
      try {
        body = await response.json();
      } catch {
        return {kind: 'give-up'};
      }
      const parsed = parseOfferResponse(body, deps.now());
      return parsed ? {kind: 'offer', response: parsed} : {kind: 'give-up'};
    }
    if (status === 404 || status === 408 || status === 429 || status >= 500) return {kind: 'retry'};
    return {kind: 'give-up'};
  } catch {
    // No token, the network failed, CORS refused, or the attempt timed out.
    return {kind: 'retry'};
  } finally {
    if (timer !== undefined) clearTimeout(timer);
  }
}

/**
 * Tells upsell-appliance the customer declined: POST, no body, no custom header (so no CORS
 * preflight; the token is in the URL). Never throws; true when the server said 2xx.
 */
export async function sendDecline(url: string, fetchFn: FetchLike): Promise<boolean> {
  try {
    const response = await fetchFn(url, {method: 'POST'});
    return response.status >= 200 && response.status < 300;
  } catch {
    return false;
  }
}

/**
 * A decimal string as money in `currency`. `format` is Shopify's `i18n.formatCurrency` (the
 * buyer's locale); if it throws, Intl.NumberFormat; if that is missing too, "24.00 USD".
 */
export function formatMoney(
  amount: string,
  currency: string,
  format?: (value: number, currency: string) => string,
): string {
  const value = Number(amount);
  if (format) {
    try {
      const s = format(value, currency);
      if (typeof s === 'string' && s) return s;
    } catch {
      // fall through
    }
  }
  try {
    return new Intl.NumberFormat(undefined, {style: 'currency', currency}).format(value);
  } catch {
    return `${amount} ${currency}`;
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isDecimal(v: unknown): v is string {
  return typeof v === 'string' && DECIMAL.test(v);
}

/** null/absent -> null; valid -> the value; present but invalid -> undefined. */
function optional<T>(v: unknown, valid: (v: unknown) => v is T): T | null | undefined {
  if (v === null || v === undefined) return null;
  return valid(v) ? v : undefined;
}

function httpsUrl(v: unknown): URL | null {
  if (typeof v !== 'string') return null;
  try {
    const url = new URL(v.trim());
    return url.protocol === 'https:' && url.hostname ? url : null;
  } catch {
    return null;
  }
}
