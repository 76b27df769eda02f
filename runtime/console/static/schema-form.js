// A form generated from a model's input schema (JSON Schema, as GET /v1/models gives it):
// one labelled field per property; the gateway validates the input again on submit.

let counter = 0;

/** Replace the fields of `fieldset` with one per property of `schema`. */
export function buildFields(fieldset, schema) {
  fieldset.replaceChildren();
  const required = new Set(schema.required || []);
  for (const [name, property] of Object.entries(schema.properties || {})) {
    const id = `input-${name}-${++counter}`;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = humanize(name) + (required.has(name) ? "" : " (optional)");
    const control = controlFor(property);
    control.id = id;
    control.name = name;
    control.dataset.kind = kindOf(property);
    control.required = required.has(name);
    const help = describe(property);
    fieldset.append(label, control);
    if (help) {
      const small = document.createElement("small");
      small.id = `${id}-help`;
      small.textContent = help;
      control.setAttribute("aria-describedby", small.id);
      fieldset.append(small);
    }
  }
}

/** The input object the fields hold; empty optional fields are left out. Throws on bad JSON. */
export function readFields(fieldset) {
  const input = {};
  for (const control of fieldset.querySelectorAll("[data-kind]")) {
    const kind = control.dataset.kind;
    if (kind === "boolean") {
      if (control.checked || control.required) input[control.name] = control.checked;
      continue;
    }
    const raw = control.value.trim();
    if (raw === "" && !control.required) continue;
    if (kind === "integer" || kind === "number") input[control.name] = Number(raw);
    else if (kind === "json") {
      try {
        input[control.name] = JSON.parse(raw);
      } catch (error) {
        throw new Error(`${humanize(control.name)}: not valid JSON (${error.message})`);
      }
    } else input[control.name] = control.value;
  }
  return input;
}

function kindOf(property) {
  const type = Array.isArray(property.type) ? property.type.find((t) => t !== "null") : property.type;
  if (property.enum) return "enum";
  if (["string", "integer", "number", "boolean"].includes(type)) return type;
  return "json";
}

function controlFor(property) {
  const kind = kindOf(property);
  if (kind === "enum") {
    const select = document.createElement("select");
    for (const value of property.enum) {
      const option = document.createElement("option");
      option.value = option.textContent = String(value);
      select.append(option);
    }
    return select;
  }
  if (kind === "boolean") {
    const box = document.createElement("input");
    box.type = "checkbox";
    box.setAttribute("role", "switch");
    box.checked = property.default === true;
    return box;
  }
  if (kind === "string" && (property.maxLength === undefined || property.maxLength > 200)) {
    const area = document.createElement("textarea");
    area.rows = 3;
    if (property.maxLength !== undefined) area.maxLength = property.maxLength;
    if (property.minLength !== undefined) area.minLength = property.minLength;
    if (property.default !== undefined) area.value = property.default;
    return area;
  }
  const input = document.createElement(kind === "json" ? "textarea" : "input");
  if (kind === "integer" || kind === "number") {
    input.type = "number";
    input.step = kind === "integer" ? "1" : "any";
    if (property.minimum !== undefined) input.min = property.minimum;
    if (property.maximum !== undefined) input.max = property.maximum;
    input.inputMode = kind === "integer" ? "numeric" : "decimal";
  } else if (kind === "string") {
    input.type = "text";
    if (property.maxLength !== undefined) input.maxLength = property.maxLength;
    if (property.minLength !== undefined) input.minLength = property.minLength;
  } else {
    input.rows = 3;
    input.placeholder = "JSON";
  }
  if (property.default !== undefined) input.value = kind === "json" ? JSON.stringify(property.default) : property.default;
  return input;
}

function describe(property) {
  const parts = [];
  if (property.description) parts.push(property.description);
  if (property.minimum !== undefined && property.maximum !== undefined) parts.push(`${property.minimum} to ${property.maximum}`);
  else if (property.minimum !== undefined) parts.push(`at least ${property.minimum}`);
  else if (property.maximum !== undefined) parts.push(`at most ${property.maximum}`);
  if (property.maxLength !== undefined) parts.push(`up to ${property.maxLength} characters`);
  if (kindOf(property) === "json") parts.push("JSON");
  return parts.join(" · ");
}

function humanize(name) {
  const words = name.replace(/[_-]+/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}
