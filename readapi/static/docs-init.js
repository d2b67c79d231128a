// Swagger UI on the read API's own description. Loaded by /docs after swagger-ui-bundle.js.
"use strict";
window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  // An operation's link (#/Tag/operationId) opens it.
  deepLinking: true,
  filter: true,
  displayRequestDuration: true,
  // The API only reads: "Try it out" sends GET requests, nothing else.
  supportedSubmitMethods: ["get"],
  // Nothing leaves for another host: no badge from the online validator.
  validatorUrl: null,
});
