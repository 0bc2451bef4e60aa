// Keys of locales/en.default.json. Shopify's i18n.translate takes any string, so the keys are
// listed here for the type checker, and `npm test` checks this list against the file.
export const MESSAGE_KEYS = [
  'heading',
  'priceLabel',
  'compareAtLabel',
  'saving',
  'code',
  'accept',
  'acceptLabel',
  'acceptNote',
  'accepted',
  'decline',
  'declineLabel',
  'editorPreview',
  'editorSampleTitle',
  'editorSettings',
  'editorApplianceUrl',
  'editorStoreId',
  'editorNetwork',
] as const;

export type MessageKey = (typeof MESSAGE_KEYS)[number];
