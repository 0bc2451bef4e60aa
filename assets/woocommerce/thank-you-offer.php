<?php
/*
 * upsell-appliance: the thank-you page offer for WooCommerce.
 *
 * Save as wp-content/mu-plugins/upsell-offer.php (or paste into your theme's
 * functions.php). `upsell-appliance offer widget --store {{STORE}}` prints this file
 * with your values filled in.
 */

const UPSELL_URL = '{{PUBLIC_URL}}';
const UPSELL_STORE = '{{STORE}}';
// Keep this secret: it opens the offers of your orders (nothing personal is in them).
const UPSELL_KEY = '{{KEY}}';

/* The token that lets this order's thank-you page fetch its offer. */
function upsell_offer_token($order_id) {
    $mac = hash_hmac('sha256', 'offer:' . UPSELL_STORE . ':' . $order_id, UPSELL_KEY, true);
    return rtrim(strtr(base64_encode(substr($mac, 0, 16)), '+/', '-_'), '=');
}

/* The offer card, below the order details on the "order received" page. The reserved
   height keeps the page from moving when the card appears. */
add_action('woocommerce_thankyou', function ($order_id) {
    if (!$order_id) {
        return;
    }
    $id = (string) $order_id;
    $url = UPSELL_URL . '/v1/offers/' . rawurlencode(UPSELL_STORE) . '/' . rawurlencode($id)
        . '?t=' . upsell_offer_token($id);
    printf('<div data-upsell-offer="%s" style="min-height:18.5rem"></div>', esc_attr($url));
    printf('<script src="%s" async></script>', esc_url(UPSELL_URL . '/thank-you.js'));
}, 20);

/* Core WooCommerce applies no coupon from a URL: taking the offer leads to
   /checkout/?add-to-cart=ID&apply_coupon=CODE, and this applies the code. add-to-cart runs
   at wp_loaded priority 20 and may redirect (to the cart page) and exit there, so the code
   is applied inside it, as the product goes into the cart, and again after it for the
   case where the product was in the cart already. */
add_action('wp_loaded', function () {
    if (empty($_GET['apply_coupon']) || !function_exists('WC') || !WC()->cart) {
        return;
    }
    $code = wc_format_coupon_code(wp_unslash($_GET['apply_coupon']));
    if ($code === '') {
        return;
    }
    $apply = function () use ($code) {
        if (!WC()->cart->has_discount($code)) {
            WC()->cart->apply_coupon($code);
        }
    };
    add_action('woocommerce_add_to_cart', $apply, 10, 0);
    add_action('wp_loaded', $apply, 30);
}, 19);
