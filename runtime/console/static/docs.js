// /docs: Swagger UI (vendored) rendering the gateway's own /openapi.json. No validator
// badge (it would call an outside service); "Try it out" sends requests to this gateway.
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    validatorUrl: null,
    deepLinking: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    persistAuthorization: false,
  });
});
