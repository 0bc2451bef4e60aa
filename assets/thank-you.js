/* upsell-appliance thank-you widget: one offer card on a WooCommerce (or any) thank-you
 * page. No dependencies, no cookies, nothing personal sent or shown.
 *
 *   <div data-upsell-offer="https://upsell.example.com/v1/offers/main/1234?t=TOKEN"
 *        style="min-height:18.5rem"></div>
 *   <script src="https://upsell.example.com/thank-you.js" async></script>
 *
 * The URL (with its token) comes from the README's PHP snippet. The container reserves
 * the card's height (18.5rem at every width), so the card appears without moving the page;
 * with no offer (a 404: none, not yet, or not for this order) it retries a few times,
 * because the order's webhook may reach the service after this page, then collapses.
 */
(function () {
  "use strict";
  // Served by upsell-appliance with assets/offer/card.css in place of this string.
  var CSS = "__CARD_CSS__";
  var RETRIES = [1000, 2000, 4000, 8000];

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  }

  function money(amount, currency) {
    try {
      return new Intl.NumberFormat(document.documentElement.lang || undefined, { style: "currency", currency: currency }).format(Number(amount));
    } catch (e) {
      return amount + " " + currency;
    }
  }

  function addStyle() {
    if (document.getElementById("upsell-card-style")) return;
    var s = el("style", { id: "upsell-card-style" });
    s.textContent = CSS;
    (document.head || document.documentElement).appendChild(s);
  }

  var count = 0;
  function render(box, data) {
    var o = data.offer;
    var id = "upsell-title-" + (++count);
    var card = el("section", { "class": "upsell-card", "aria-labelledby": id });
    var top = el("div", { "class": "upsell-top" });
    top.appendChild(o.image_url
      ? el("img", { "class": "upsell-img", src: o.image_url, alt: o.title, width: "96", height: "96", decoding: "async" })
      : el("div", { "class": "upsell-img", role: "presentation" }));
    var body = el("div", { "class": "upsell-body" });
    body.appendChild(el("p", { "class": "upsell-kicker one" }, "You might also like"));
    body.appendChild(el("h2", { id: id }, o.title));
    var price = el("p", { "class": "upsell-price one" }, money(o.price, o.currency));
    if (o.compare_at_price) {
      var was = el("s", {}, money(o.compare_at_price, o.currency));
      was.setAttribute("aria-label", "was " + money(o.compare_at_price, o.currency));
      price.appendChild(was);
    }
    body.appendChild(price);
    body.appendChild(el("p", { "class": "upsell-saving one" }, o.saving ? "You save " + money(o.saving, o.currency) : ""));
    body.appendChild(el("p", { "class": "upsell-code one" }, o.discount_code ? "Code " + o.discount_code + " applied" : ""));
    top.appendChild(body);
    var actions = el("div", { "class": "upsell-actions" });
    var accept = el("a", { "class": "upsell-accept", href: data.accept_url }, "Buy now \u2014 new checkout");
    var decline = el("button", { "class": "upsell-decline", type: "button" }, "No thanks");
    decline.addEventListener("click", function () {
      try {
        fetch(data.decline_url, { method: "POST", mode: "cors", keepalive: true });
      } catch (e) { /* the answer is not needed */ }
      // Focus moves to the message that replaces the card, not to the page's top.
      var note = el("p", { "class": "upsell-note", role: "status", tabindex: "-1" }, "No problem \u2014 enjoy your order.");
      box.replaceChildren(note);
      box.style.minHeight = "";
      note.focus();
    });
    actions.appendChild(accept);
    actions.appendChild(decline);
    card.appendChild(top);
    card.appendChild(actions);
    card.appendChild(el("p", { "class": "upsell-note one" }, "A separate order; yours is complete."));
    box.replaceChildren(card);
  }

  function load(box, attempt) {
    var url = box.getAttribute("data-upsell-offer");
    var retry = function () {
      if (attempt < RETRIES.length) setTimeout(function () { load(box, attempt + 1); }, RETRIES[attempt]);
      else box.style.minHeight = "";
    };
    fetch(url, { mode: "cors", credentials: "omit", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        // The service decides whether the offer is still open (a device's clock may be
        // wrong), so expires_at is not checked here.
        if (data && data.offer) render(box, data);
        else retry();
      }, retry);
  }

  function start() {
    var boxes = document.querySelectorAll("[data-upsell-offer]");
    if (!boxes.length || !window.fetch) return;
    addStyle();
    for (var i = 0; i < boxes.length; i++) {
      if (boxes[i].getAttribute("data-upsell-started")) continue;
      boxes[i].setAttribute("data-upsell-started", "1");
      boxes[i].setAttribute("aria-live", "polite");
      load(boxes[i], 0);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
