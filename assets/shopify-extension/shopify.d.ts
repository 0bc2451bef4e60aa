// Types the `shopify` global for the extension's module, in the form `shopify app dev` and
// `shopify app build` generate (they may rewrite this file with the same content).
import '@shopify/ui-extensions';

//@ts-ignore
declare module './src/ThankYou.tsx' {
  const shopify: import('@shopify/ui-extensions/purchase.thank-you.block.render').Api;
  const globalThis: { shopify: typeof shopify };
}
