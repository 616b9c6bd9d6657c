// The hub's docs page: Swagger UI over the hub's own OpenAPI description.
//
// The description and every call need `Authorization: Bearer <token>`. The page asks for the
// token once, keeps it in sessionStorage (so it is gone when the tab closes and never sits in a
// URL or a cookie the browser would send by itself), and adds it to every request Swagger UI
// makes through `requestInterceptor`, the spec's fetch included.
(function () {
  "use strict";
  var KEY = "hub.api.token";
  var SPEC = "/api/v1/openapi.json";
  var form = document.getElementById("token-form");
  var input = document.getElementById("token");
  var state = document.getElementById("token-state");

  function token() {
    try {
      return window.sessionStorage.getItem(KEY) || "";
    } catch (e) {
      return "";
    }
  }

  function show() {
    if (token()) {
      state.textContent = "token set for this tab";
      state.className = "";
    } else {
      state.textContent = "no token: paste one to load the API description";
      state.className = "missing";
    }
  }

  function load() {
    show();
    if (!token()) {
      document.getElementById("swagger-ui").textContent = "";
      return;
    }
    window.ui = SwaggerUIBundle({
      url: SPEC,
      dom_id: "#swagger-ui",
      deepLinking: true,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout",
      // Nothing leaves the hub: no validator badge calling out to the internet.
      validatorUrl: null,
      requestInterceptor: function (request) {
        var t = token();
        if (t) {
          request.headers.Authorization = "Bearer " + t;
        }
        return request;
      }
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var value = input.value.trim();
    input.value = "";
    if (value) {
      window.sessionStorage.setItem(KEY, value);
    }
    load();
  });

  document.getElementById("forget").addEventListener("click", function () {
    window.sessionStorage.removeItem(KEY);
    load();
  });

  load();
})();
