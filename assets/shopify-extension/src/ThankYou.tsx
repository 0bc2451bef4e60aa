// upsell-appliance's block for the Thank you page (target purchase.thank-you.block.render).
//
// Shows one offer that upsell-appliance picked for this order, or nothing. The only thing sent
// is the order's numeric id, with a Shopify session token that upsell-appliance verifies with
// the app's client secret. No personal data is read or shown.
import '@shopify/ui-extensions/preact';
import {render} from 'preact';
import {useEffect, useState} from 'preact/hooks';

import type {MessageKey} from './messages';
import {
  type OfferResponse,
  fetchOffer,
  formatMoney,
  msUntilExpiry,
  offerUrl,
  orderIdFromGid,
  readSettings,
  sendDecline,
} from './offer';

export default async () => {
  render(<Extension />, document.body);
};

/** setTimeout's largest delay; an expiry further away than this (24.8 days) is not timed. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

type State = {kind: 'loading'} | {kind: 'none'} | {kind: 'offer'; response: OfferResponse};

/** Exported for test/render.test.tsx; Shopify only calls the default export. */
export function Extension() {
  // Reading .value subscribes this component: it renders again when they change (the merchant
  // typing the settings in the checkout editor, for one).
  const settings = readSettings(shopify.settings.value);
  const orderId = orderIdFromGid(shopify.orderConfirmation.value?.order?.id);
  const inEditor = shopify.extension.editor !== undefined;
  const canFetch = shopify.extension.capabilities.value.includes('network_access');
  const url = settings.ok && orderId && canFetch && !inEditor ? offerUrl(settings.settings, orderId) : null;

  const [state, setState] = useState<State>({kind: 'loading'});

  useEffect(() => {
    if (!url) return;
    let cancelled = false;
    const timers = new Set<ReturnType<typeof setTimeout>>();
    setState({kind: 'loading'});
    fetchOffer(url, {
      fetch: (u, init) => fetch(u, init),
      getToken: () => shopify.sessionToken.get(),
      sleep: (ms) =>
        new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            timers.delete(timer);
            resolve();
          }, ms);
          timers.add(timer);
        }),
      now: () => Date.now(),
      isCancelled: () => cancelled,
    }).then((response) => {
      if (!cancelled) setState(response ? {kind: 'offer', response} : {kind: 'none'});
    });
    return () => {
      cancelled = true;
      timers.forEach((timer) => clearTimeout(timer));
    };
  }, [url]);

  // An offer past its expires_at is taken away, even while the page stays open.
  useEffect(() => {
    if (state.kind !== 'offer') return;
    const ms = msUntilExpiry(state.response, Date.now());
    if (ms <= 0) {
      setState({kind: 'none'});
      return;
    }
    if (ms > MAX_TIMEOUT_MS) return;
    const timer = setTimeout(() => setState({kind: 'none'}), ms);
    return () => clearTimeout(timer);
  }, [state]);

  if (inEditor) {
    const problems: string[] = [];
    if (!settings.ok) {
      if (settings.problems.includes('appliance_url')) problems.push(t('editorApplianceUrl'));
      if (settings.problems.includes('store_id')) problems.push(t('editorStoreId'));
    }
    if (!canFetch) problems.push(t('editorNetwork'));
    if (problems.length > 0) {
      return (
        <s-banner heading="upsell-appliance" tone="warning">
          <s-stack gap="small-200">
            <s-text>{t('editorSettings')}</s-text>
            {problems.map((p) => (
              <s-text key={p}>{p}</s-text>
            ))}
          </s-stack>
        </s-banner>
      );
    }
    return <OfferCard response={editorSample()} preview />;
  }

  // While loading, nothing: the answer can take up to ~30 s of retries and is often "no offer",
  // so a placeholder would appear and then vanish. The card appears once, at its final size.
  if (state.kind !== 'offer') return null;
  return <OfferCard response={state.response} onDecline={() => setState({kind: 'none'})} />;
}

export function OfferCard({
  response,
  preview = false,
  onDecline,
}: {
  response: OfferResponse;
  preview?: boolean;
  onDecline?: () => void;
}) {
  const {offer} = response;
  const [accepted, setAccepted] = useState(false);
  const money = (amount: string) =>
    formatMoney(amount, offer.currency, (value, currency) => shopify.i18n.formatCurrency(value, {currency}));

  const decline = () => {
    onDecline?.();
    if (!preview) void sendDecline(response.decline_url, (u, init) => fetch(u, init));
  };

  return (
    <s-section heading={t('heading')}>
      <s-stack gap="base">
        {preview && <s-text color="subdued">{t('editorPreview')}</s-text>}
        <s-grid gridTemplateColumns={offer.image_url ? '96px 1fr' : '1fr'} gap="base" alignItems="start">
          {offer.image_url && (
            // A fixed box and aspect ratio: the space is taken before the image loads.
            <s-box inlineSize="96px">
              <s-image
                src={offer.image_url}
                alt={offer.title}
                aspectRatio="1/1"
                objectFit="cover"
                inlineSize="fill"
                borderRadius="base"
              />
            </s-box>
          )}
          <s-stack gap="small-200">
            <s-text type="strong">{offer.title}</s-text>
            <s-stack direction="inline" gap="small-200" alignItems="center">
              <s-text accessibilityVisibility="exclusive">{t('priceLabel')}</s-text>
              <s-text type="strong">{money(offer.price)}</s-text>
              {offer.compare_at_price && (
                <>
                  <s-text accessibilityVisibility="exclusive">{t('compareAtLabel')}</s-text>
                  <s-text type="redundant" color="subdued">
                    {money(offer.compare_at_price)}
                  </s-text>
                </>
              )}
            </s-stack>
            {offer.saving && <s-text tone="success">{t('saving', {amount: money(offer.saving)})}</s-text>}
            {offer.discount_code && <s-text color="subdued">{t('code', {code: offer.discount_code})}</s-text>}
          </s-stack>
        </s-grid>
        <s-stack gap="small-200">
          <s-button
            variant="primary"
            inlineSize="fill"
            // Preview: no link, so a click in the editor goes nowhere.
            href={preview ? undefined : response.accept_url}
            target="_blank"
            disabled={preview}
            accessibilityLabel={t('acceptLabel', {title: offer.title})}
            onClick={() => setAccepted(true)}
          >
            {t('accept')}
          </s-button>
          <s-text type="small" color="subdued">
            {accepted ? t('accepted') : t('acceptNote')}
          </s-text>
          <s-button
            variant="secondary"
            inlineSize="fill"
            accessibilityLabel={t('declineLabel', {title: offer.title})}
            onClick={decline}
          >
            {t('decline')}
          </s-button>
        </s-stack>
      </s-stack>
    </s-section>
  );
}

/** What the checkout editor shows once the settings are filled in: no request is made there. */
function editorSample(): OfferResponse {
  return {
    offer: {
      title: t('editorSampleTitle'),
      image_url: null,
      price: '24.00',
      compare_at_price: '30.00',
      currency: shopify.localization.currency.value.isoCode,
      discount_code: 'THANKS10',
      saving: '6.00',
    },
    expires_at: new Date(Date.now() + 86_400_000).toISOString(),
    accept_url: '',
    decline_url: '',
  };
}

function t(key: MessageKey, replacements?: Record<string, string>): string {
  return shopify.i18n.translate(key, replacements);
}
