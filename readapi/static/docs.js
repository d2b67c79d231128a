// Renders the OpenAPI document of this service: operations, parameters, responses, schemas.
// Every text from the document goes through text nodes, never through HTML parsing.
(function () {
  "use strict";

  var METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

  function el(tag, attrs) {
    var node = document.createElement(tag);
    var key;
    for (key in attrs || {}) {
      if (Object.prototype.hasOwnProperty.call(attrs, key)) {
        node.setAttribute(key, attrs[key]);
      }
    }
    for (var i = 2; i < arguments.length; i += 1) {
      append(node, arguments[i]);
    }
    return node;
  }

  function append(node, child) {
    if (child === null || child === undefined || child === false) {
      return;
    }
    if (Array.isArray(child)) {
      child.forEach(function (item) { append(node, item); });
    } else if (typeof child === "string" || typeof child === "number") {
      node.appendChild(document.createTextNode(String(child)));
    } else {
      node.appendChild(child);
    }
  }

  // Descriptions use `code` spans and blank lines between paragraphs; nothing else.
  function prose(text) {
    if (!text) {
      return null;
    }
    return String(text).split(/\n\s*\n/).map(function (paragraph) {
      var p = el("p");
      paragraph.split("`").forEach(function (part, index) {
        append(p, index % 2 === 1 ? el("code", null, part) : part.replace(/\s*\n\s*/g, " "));
      });
      return p;
    });
  }

  function anchor(kind, name) {
    return kind + "-" + String(name).replace(/[^A-Za-z0-9_-]+/g, "-");
  }

  function refName(ref) {
    var parts = String(ref).split("/");
    return decodeURIComponent(parts[parts.length - 1]).replace(/~1/g, "/").replace(/~0/g, "~");
  }

  function resolve(spec, item) {
    var seen = 0;
    while (item && item.$ref && seen < 20) {
      var target = spec;
      String(item.$ref).replace(/^#\//, "").split("/").forEach(function (part) {
        var key = decodeURIComponent(part).replace(/~1/g, "/").replace(/~0/g, "~");
        target = target && Object.prototype.hasOwnProperty.call(target, key) ? target[key] : null;
      });
      item = target;
      seen += 1;
    }
    return item || {};
  }

  // A one-line description of a schema; named schemas become links to their section.
  function typeOf(schema) {
    if (!schema) {
      return "any";
    }
    if (schema.$ref) {
      var name = refName(schema.$ref);
      return el("a", { href: "#" + anchor("schema", name) }, name);
    }
    var alternatives = schema.anyOf || schema.oneOf;
    if (alternatives) {
      return join(alternatives.map(typeOf), " | ");
    }
    if (schema.allOf) {
      return join(schema.allOf.map(typeOf), " & ");
    }
    if (schema.const !== undefined) {
      return el("code", null, JSON.stringify(schema.const));
    }
    if (schema.enum) {
      return join(schema.enum.map(function (v) { return el("code", null, JSON.stringify(v)); }), " | ");
    }
    var types = Array.isArray(schema.type) ? schema.type : [schema.type || "any"];
    var parts = types.map(function (type) {
      if (type === "array") {
        return ["array of ", typeOf(schema.items)];
      }
      return type + (schema.format && type !== "null" ? " (" + schema.format + ")" : "");
    });
    return join(parts, " | ");
  }

  function join(items, separator) {
    var out = [];
    items.forEach(function (item, index) {
      if (index > 0) {
        out.push(separator);
      }
      out.push(item);
    });
    return out;
  }

  function constraints(schema) {
    var notes = [];
    if (!schema) {
      return notes;
    }
    if (schema.minimum !== undefined) { notes.push("min " + schema.minimum); }
    if (schema.maximum !== undefined) { notes.push("max " + schema.maximum); }
    if (schema.minLength !== undefined) { notes.push("min length " + schema.minLength); }
    if (schema.maxLength !== undefined) { notes.push("max length " + schema.maxLength); }
    if (schema.pattern !== undefined) { notes.push("pattern " + schema.pattern); }
    if (schema.default !== undefined) { notes.push("default " + JSON.stringify(schema.default)); }
    return notes;
  }

  function parametersTable(spec, parameters) {
    var rows = parameters.map(function (raw) {
      var parameter = resolve(spec, raw);
      var schema = parameter.schema || {};
      var notes = constraints(schema);
      return el("tr", null,
        el("td", null, el("code", null, parameter.name),
          parameter.required ? el("span", { "class": "req" }, "required") : null),
        el("td", null, parameter.in),
        el("td", null, typeOf(schema)),
        el("td", null, prose(raw.description || parameter.description),
          notes.length ? el("p", { "class": "muted" }, notes.join(", ")) : null));
    });
    return el("table", null,
      el("thead", null, el("tr", null, el("th", null, "Name"), el("th", null, "In"),
        el("th", null, "Type"), el("th", null, "Description"))),
      el("tbody", null, rows));
  }

  function responsesTable(spec, responses) {
    var rows = Object.keys(responses).sort().map(function (status) {
      var response = resolve(spec, responses[status]);
      var bodies = Object.keys(response.content || {}).map(function (mediaType) {
        return el("div", null, el("span", { "class": "mono" }, mediaType), ": ",
          typeOf(response.content[mediaType].schema));
      });
      var headers = Object.keys(response.headers || {});
      return el("tr", null,
        el("td", null, el("strong", null, status)),
        el("td", null, prose(response.description)),
        el("td", null, bodies),
        el("td", null, join(headers.map(function (h) { return el("code", null, h); }), ", ")));
    });
    return el("table", null,
      el("thead", null, el("tr", null, el("th", null, "Status"), el("th", null, "Meaning"),
        el("th", null, "Body"), el("th", null, "Headers"))),
      el("tbody", null, rows));
  }

  function securityLine(spec, operation) {
    var requirements = operation.security || spec.security || [];
    if (!requirements.length) {
      return el("p", { "class": "muted" }, "No authentication.");
    }
    var schemes = (spec.components || {}).securitySchemes || {};
    var names = [];
    requirements.forEach(function (requirement) {
      Object.keys(requirement).forEach(function (name) {
        var scheme = schemes[name] || {};
        names.push(el("code", null, scheme.name || name));
      });
    });
    return el("p", null, "Headers required: ", join(names, " and "), ".");
  }

  function operationSection(spec, path, method, operation, pathItem) {
    var id = anchor("op", operation.operationId || method + path);
    var parameters = (pathItem.parameters || []).concat(operation.parameters || []);
    return el("section", { "class": "op", id: id },
      el("h3", null, el("span", { "class": "method" }, method), el("span", { "class": "mono" }, path)),
      el("p", null, el("strong", null, operation.summary || ""),
        operation.operationId ? el("span", { "class": "muted" }, "  (" + operation.operationId + ")") : null),
      prose(operation.description),
      securityLine(spec, operation),
      parameters.length ? [el("h4", null, "Parameters"), parametersTable(spec, parameters)] : null,
      el("h4", null, "Responses"),
      responsesTable(spec, operation.responses || {}));
  }

  function propertiesTable(schema) {
    var properties = schema.properties || {};
    var required = schema.required || [];
    var rows = Object.keys(properties).map(function (name) {
      var property = properties[name];
      var notes = constraints(property);
      var nested = property.type === "object" && property.properties ? propertiesTable(property) : null;
      return el("tr", null,
        el("td", null, el("code", null, name),
          required.indexOf(name) >= 0 ? el("span", { "class": "req" }, "required") : null),
        el("td", null, typeOf(property)),
        el("td", null, prose(property.description),
          notes.length ? el("p", { "class": "muted" }, notes.join(", ")) : null, nested));
    });
    return el("table", null,
      el("thead", null, el("tr", null, el("th", null, "Field"), el("th", null, "Type"),
        el("th", null, "Description"))),
      el("tbody", null, rows));
  }

  function schemaSection(name, schema) {
    return el("section", { "class": "schema", id: anchor("schema", name) },
      el("h3", null, name, " ", el("span", { "class": "muted" }, typeOf(Object.assign({}, schema, { properties: undefined })))),
      prose(schema.description),
      schema.properties ? propertiesTable(schema) : null);
  }

  function render(spec) {
    var main = document.getElementById("docs");
    var nav = document.getElementById("nav");
    var info = spec.info || {};
    document.title = info.title || document.title;
    document.getElementById("title").textContent = (info.title || "API") +
      (info.version ? " " + info.version : "");
    main.textContent = "";
    nav.textContent = "";
    append(main, prose(info.description));

    var byTag = {};
    var tagOrder = (spec.tags || []).map(function (tag) { return tag.name; });
    Object.keys(spec.paths || {}).forEach(function (path) {
      var pathItem = spec.paths[path];
      METHODS.forEach(function (method) {
        var operation = pathItem[method];
        if (!operation) {
          return;
        }
        var tag = (operation.tags || ["Other"])[0];
        if (tagOrder.indexOf(tag) < 0) {
          tagOrder.push(tag);
        }
        (byTag[tag] = byTag[tag] || []).push([path, method, operation, pathItem]);
      });
    });

    tagOrder.forEach(function (tag) {
      var operations = byTag[tag] || [];
      if (!operations.length) {
        return;
      }
      append(main, el("h2", { id: anchor("tag", tag) }, tag));
      append(nav, el("h2", null, tag));
      var list = el("ul");
      operations.forEach(function (entry) {
        var section = operationSection(spec, entry[0], entry[1], entry[2], entry[3]);
        append(main, section);
        append(list, el("li", null, el("a", { href: "#" + section.id, "class": "mono" }, entry[0])));
      });
      append(nav, list);
    });

    var schemas = (spec.components || {}).schemas || {};
    var names = Object.keys(schemas);
    if (names.length) {
      append(main, el("h2", { id: "schemas" }, "Schemas"));
      append(nav, el("h2", null, "Schemas"));
      var list = el("ul");
      names.forEach(function (name) {
        append(main, schemaSection(name, schemas[name]));
        append(list, el("li", null, el("a", { href: "#" + anchor("schema", name) }, name)));
      });
      append(nav, list);
    }
    if (window.location.hash) {
      var target = document.getElementById(window.location.hash.slice(1));
      if (target) {
        target.scrollIntoView();
      }
    }
  }

  function fail(message) {
    var main = document.getElementById("docs");
    main.textContent = "";
    append(main, el("p", { "class": "error" }, "Could not load the API description: " + message));
  }

  var url = document.body.getAttribute("data-spec-url") || "/openapi.json";
  fetch(url, { headers: { Accept: "application/json" } })
    .then(function (response) {
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      return response.json();
    })
    .then(render)
    .catch(function (error) { fail(String(error && error.message ? error.message : error)); });
}());
